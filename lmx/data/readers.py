"""Local dataset files -> plain Python / numpy records; a malformed line is an error naming it.

Records (all readers return lists of dicts, except ratings: a dict of numpy arrays):
  tagging:         {"words": [str], "tags": [str] (BIO / IOB2), "document": int}
  classification:  {"text": str, "label": str} (CSV / TSV rows add "line": int, where the row ends)
  label names:     [str] (a JSON list)
  conversations:   {"messages": [{"role": str, "content": str}], "line": int} (chat JSONL)
  ratings:         {"user_id": int64 (N,), "item_id": int64 (N,), "rating": float32 (N,),
                    "timestamp": int64 (N,)}   N = number of ratings, in file order.

Every error is a ValueError that starts with `file:line:` and says what was expected.
"""
from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Iterator, Sequence

import numpy as np

PHRASEBANK_LABELS = ("positive", "negative", "neutral")
CLINC150_SPLITS = ("train", "val", "test")
CLINC150_OOS_LABEL = "oos"
RATINGS_HEADER = ("userId", "movieId", "rating", "timestamp")
_TAG_RE = re.compile(r"^(O|[BI]-\S+)$")


def _fail(path: str, line: int, message: str) -> ValueError:
    return ValueError(f"{path}:{line}: {message}")


def _decode(path: str, encoding: str) -> str:
    """The whole file decoded strictly (a UTF-8 BOM dropped); a bad byte names its line."""
    with open(path, "rb") as f:
        raw = f.read()
    if encoding == "utf-8" and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise _fail(path, line, f"not valid {encoding} ({e.reason} at byte {e.start})") from None


def _lines(path: str, encoding: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without "\n" / "\r\n"); only "\n" ends a line."""
    lines = _decode(path, encoding).split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        yield number, line.removesuffix("\r")


# --- CoNLL column format -----------------------------------------------------------------

def iob1_to_bio(tags: Sequence[str]) -> list[str]:
    """IOB1 (I- everywhere, B- only between adjacent same-type entities) -> BIO (IOB2)."""
    bio, prev = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        bio.append(tag)
        prev = tag
    return bio


def read_conll(path: str, *, scheme: str = "iob1", num_columns: int = 4,
               tag_column: int = -1) -> list[dict[str, Any]]:
    """Sentences of a CoNLL column file (`word POS chunk NER`), tags converted to BIO.

    Blank lines end sentences; `-DOCSTART-` lines start documents (they and their blank line
    are not sentences). `scheme`: "iob1" (CoNLL-2003 as distributed) or "bio" (kept as is).
    """
    if scheme not in ("iob1", "bio"):
        raise ValueError(f"scheme={scheme!r}: expected 'iob1' or 'bio'")
    sentences, words, tags, document = [], [], [], -1

    def flush():
        if words:
            bio = iob1_to_bio(tags) if scheme == "iob1" else list(tags)
            sentences.append({"words": list(words), "tags": bio, "document": max(document, 0)})
            words.clear()
            tags.clear()

    for number, line in _lines(path, "utf-8"):
        if not line.strip():
            flush()
            continue
        columns = line.split(" ")
        if columns[0] == "-DOCSTART-":
            flush()
            document += 1
            continue
        if len(columns) != num_columns:
            raise _fail(path, number, f"expected {num_columns} space-separated columns "
                                      f"(word POS chunk NER), got {len(columns)}: {line!r}")
        tag = columns[tag_column]
        if not _TAG_RE.match(tag):
            raise _fail(path, number, f"expected a tag O, B-TYPE or I-TYPE, got {tag!r}")
        if scheme == "bio" and tag.startswith("I-") and (not tags or tags[-1][2:] != tag[2:]):
            raise _fail(path, number, f"{tag} does not continue an entity (scheme='bio')")
        words.append(columns[0])
        tags.append(tag)
    flush()
    if not sentences:
        raise ValueError(f"{path}: no sentences")
    return sentences


# --- delimited text classification -------------------------------------------------------

def read_delimited(path: str, text_column: str, label_column: str, *,
                   delimiter: str | None = None) -> list[dict[str, Any]]:
    """{"text", "label", "line"} rows of a CSV / TSV file with a header (Python's csv module);
    `line` is where the row ends (label errors downstream name it). Blank lines are skipped.

    `delimiter` defaults to a tab for `.tsv` files (no quoting: GLUE TSVs hold bare quotes)
    and a comma otherwise (RFC 4180 quoting: quoted newlines, CRLF). A UTF-8 BOM is skipped.
    """
    tsv = (delimiter or ("\t" if path.endswith(".tsv") else ",")) == "\t"
    delimiter = "\t" if tsv else (delimiter or ",")
    quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    rows = []
    with io.StringIO(_decode(path, "utf-8"), newline="") as f:  # bad bytes name their line
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise _fail(path, 1, "expected a header row, got an empty file")
            for column in (text_column, label_column):
                if column not in header:
                    raise _fail(path, 1, f"expected a column {column!r} in header {header}")
            text_i, label_i = header.index(text_column), header.index(label_column)
            for row in reader:
                if not row:  # a blank line is no record (as csv.DictReader has it)
                    continue
                if len(row) != len(header):
                    raise _fail(path, reader.line_num, f"expected {len(header)} fields "
                                f"({delimiter.join(header)!r}), got {len(row)}")
                if not row[label_i]:
                    raise _fail(path, reader.line_num, f"expected a label in {label_column!r}")
                rows.append({"text": row[text_i], "label": row[label_i],
                             "line": reader.line_num})
        except csv.Error as e:
            raise _fail(path, reader.line_num, f"malformed {'TSV' if tsv else 'CSV'}: {e}"
                        ) from None
    if not rows:
        raise _fail(path, max(reader.line_num, 1), "no examples after the header")
    return rows


def read_label_names(path: str) -> list[str]:
    """A JSON list of distinct label names (data.labels_file)."""
    try:
        names = json.loads(_decode(path, "utf-8"))
    except json.JSONDecodeError as e:
        raise _fail(path, e.lineno, f"not JSON ({e.msg})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise _fail(path, 1, "expected a non-empty JSON list of label names (strings)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(path, 1, f"duplicate label names {duplicates[:10]}")
    return names


def _json_lines(path: str):
    """(line number, parsed JSON value) per non-blank line; bad JSON names path:line."""
    for number, line in _lines(path, "utf-8"):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise _fail(path, number, f"expected a JSON object ({e.msg}, column {e.colno})"
                        ) from None


def read_jsonl(path: str, fields: Sequence[str]) -> list[dict[str, Any]]:
    """One JSON object per line; each record keeps `fields` (all required). Blank lines skip."""
    records = []
    for number, obj in _json_lines(path):
        if not isinstance(obj, dict):
            raise _fail(path, number, f"expected a JSON object, got {type(obj).__name__}")
        missing = [name for name in fields if name not in obj]
        if missing:
            raise _fail(path, number, f"expected fields {list(fields)}, missing {missing}")
        records.append({name: obj[name] for name in fields})
    if not records:
        raise ValueError(f"{path}: no records")
    return records


CHAT_ROLES = ("system", "user", "assistant")


def read_conversations(path: str) -> list[dict[str, Any]]:
    """Chat JSONL: one `{"messages": [{"role": ..., "content": ...}, ...]}` per line (blank
    lines skip). Roles are CHAT_ROLES; contents strings; a conversation needs an assistant
    turn. Records: {"messages": [{"role", "content"}], "line": int}."""
    records = []
    for number, obj in _json_lines(path):
        messages = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(messages, list) or not messages:
            raise _fail(path, number, 'expected {"messages": [{"role": ..., "content": ...}, '
                        '...]} with at least one message')
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise _fail(path, number, f"messages[{i}]: expected an object with a string "
                            f"'content', got {json.dumps(m)[:80]}")
            if m.get("role") not in CHAT_ROLES:
                raise _fail(path, number, f"messages[{i}]: role {m.get('role')!r} is not one "
                            f"of {list(CHAT_ROLES)}")
        if not any(m["role"] == "assistant" for m in messages):
            raise _fail(path, number, "no assistant message: nothing to learn or to score")
        records.append({"messages": [{"role": m["role"], "content": m["content"]}
                                     for m in messages], "line": number})
    if not records:
        raise ValueError(f"{path}: no conversations")
    return records


def read_phrasebank(path: str) -> list[dict[str, str]]:
    """Financial PhraseBank `sentence@label` lines (ISO-8859-1), split on the last `@`."""
    records = []
    for number, line in _lines(path, "iso-8859-1"):
        sentence, at, label = line.rpartition("@")
        if not at or not sentence.strip():
            raise _fail(path, number, f"expected 'sentence@label', got {line[:60]!r}")
        if label not in PHRASEBANK_LABELS:
            raise _fail(path, number, f"expected a label in {PHRASEBANK_LABELS}, got {label!r}")
        records.append({"text": sentence, "label": label})
    if not records:
        raise ValueError(f"{path}: no sentences")
    return records


# --- CLINC150 ------------------------------------------------------------------------------

def _json_split_items(path: str, text: str) -> dict[str, list[tuple[Any, int]]]:
    """{key: [(item, line)]} of a top-level JSON object of lists, with each item's line."""
    decoder, ws = json.JSONDecoder(), re.compile(r"\s*")

    newlines = [0, 0]  # (position counted up to, newlines before it): positions only grow

    def line_of(pos: int) -> int:
        newlines[1] += text.count("\n", newlines[0], pos)
        newlines[0] = pos
        return newlines[1] + 1

    def expect(pos: int, chars: str) -> tuple[str, int]:
        pos = ws.match(text, pos).end()
        if pos >= len(text) or text[pos] not in chars:
            got = repr(text[pos]) if pos < len(text) else "end of file"
            raise _fail(path, line_of(pos), f"expected one of {chars!r}, got {got}")
        return text[pos], pos + 1

    def decode(pos: int) -> tuple[Any, int]:
        pos = ws.match(text, pos).end()
        try:
            return decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise _fail(path, e.lineno, f"invalid JSON: {e.msg}") from None

    splits, (_, pos) = {}, expect(0, "{")
    while True:
        key, pos = decode(pos)
        _, pos = expect(pos, ":")
        _, pos = expect(pos, "[")
        items = splits.setdefault(key, [])
        if ws.match(text, pos).end() < len(text) and text[ws.match(text, pos).end()] == "]":
            pos = ws.match(text, pos).end() + 1
        else:
            char = ","
            while char == ",":
                start = ws.match(text, pos).end()
                item, pos = decode(pos)
                items.append((item, line_of(start)))
                char, pos = expect(pos, ",]")
        char, pos = expect(pos, ",}")
        if char == "}":
            return splits


def read_clinc150(path: str, split: str, *, include_oos: bool = True) -> list[dict[str, str]]:
    """CLINC150 data_full.json: `split` in train / val / test, plus `oos_<split>` (label `oos`)."""
    if split not in CLINC150_SPLITS:
        raise ValueError(f"split={split!r}: expected one of {CLINC150_SPLITS}")
    splits = _json_split_items(path, _decode(path, "utf-8"))
    keys = [split] + ([f"oos_{split}"] if include_oos else [])
    records = []
    for key in keys:
        if key not in splits:
            raise ValueError(f"{path}: no key {key!r} (keys: {sorted(splits)})")
        for item, line in splits[key]:
            if not (isinstance(item, list) and len(item) == 2
                    and all(isinstance(x, str) for x in item)):
                raise _fail(path, line, f"{key}: expected [text, intent], got {item!r}")
            if key.startswith("oos_") and item[1] != CLINC150_OOS_LABEL:
                raise _fail(path, line, f"{key}: expected label 'oos', got {item[1]!r}")
            records.append({"text": item[0], "label": item[1]})
    return records


# --- raw text, ratings -------------------------------------------------------------------

def read_text(path: str, encoding: str = "utf-8") -> str:
    """A raw text corpus as one string, byte for byte (strict decoding: a bad byte names its line)."""
    text = _decode(path, encoding)
    if not text.strip():
        raise ValueError(f"{path}: empty text")
    return text


def read_ratings(path: str) -> dict[str, np.ndarray]:
    """MovieLens ratings.csv (`userId,movieId,rating,timestamp`) as numpy arrays, file order."""
    columns: list[list] = [[], [], [], []]
    with io.StringIO(_decode(path, "utf-8"), newline="") as f:
        reader = csv.reader(f, strict=True)
        try:
            rows = list(reader)
        except csv.Error as e:  # e.g. an unclosed quote
            raise _fail(path, reader.line_num, f"malformed CSV: {e}") from None
        header = tuple(rows[0]) if rows else ()
        if header != RATINGS_HEADER:
            raise _fail(path, 1, f"expected header {','.join(RATINGS_HEADER)}, got {header}")
        for line, row in enumerate(rows[1:], start=2):
            try:
                if len(row) != 4:
                    raise ValueError(f"{len(row)} fields")
                user, item, rating, stamp = int(row[0]), int(row[1]), float(row[2]), int(row[3])
                if not 0.0 <= rating <= 5.0:
                    raise ValueError(f"rating {rating} outside [0, 5]")
            except ValueError as e:
                raise _fail(path, line, "expected userId,movieId,rating,timestamp "
                            f"(int,int,float,int), got {','.join(row)!r}: {e}") from None
            for column, value in zip(columns, (user, item, rating, stamp)):
                column.append(value)
    if not columns[0]:
        raise ValueError(f"{path}: no ratings")
    return {"user_id": np.asarray(columns[0], np.int64),
            "item_id": np.asarray(columns[1], np.int64),
            "rating": np.asarray(columns[2], np.float32),
            "timestamp": np.asarray(columns[3], np.int64)}
