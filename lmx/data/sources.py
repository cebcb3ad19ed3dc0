"""Where a task's examples come from: files, tfds catalog datasets ("tfds:NAME") or checksummed
downloads ("fetch:NAME/FILE", lmx.data.fetch), the tokenizer a task uses, and the one carver of
fixed validation splits out of a training set."""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from lmx.data import readers


def tokenizer_for(config: ml_collections.ConfigDict, workdir: str):
    """The tokenizer and the folder it came from (None for "char").

    `data.tokenizer`: "" = the pretrained model's; "char" = characters of the train file;
    a folder = the tokenizer files in it (e.g. a sentencepiece model)."""
    from lmx.data.tokenizer import CharTokenizer  # noqa: PLC0415
    from lmx.hf import pretrained  # noqa: PLC0415
    choice = config.data.tokenizer
    char_vocab = os.path.join(choice or config.model.pretrained, "char_vocab.json")
    if choice != "char" and (choice or config.model.pretrained) and os.path.isfile(char_vocab):
        return CharTokenizer.load(char_vocab, config.data.unknown_char), None  # an lmx export
    if choice == "char":
        path = os.path.join(workdir, "char_vocab.json")
        if os.path.exists(path):  # a resumed run keeps its vocabulary
            return CharTokenizer.load(path), None
        tokenizer = CharTokenizer.from_text(read_corpus(config.data.train_file,
                                                        config.data.train_split, config.data))
        os.makedirs(workdir, exist_ok=True)
        tokenizer.save(path)
        return tokenizer, None
    folder = choice or config.model.pretrained
    if not folder and config.data.tokenizer_vocab_size:
        folder = os.path.join(workdir, "tokenizer")
        if not os.path.exists(os.path.join(folder, "tokenizer.model")):  # resumes reuse it
            from lmx.data import tokenizer as tokenizer_lib  # noqa: PLC0415
            os.makedirs(folder, exist_ok=True)
            corpus = os.path.join(folder, "corpus.txt")
            with open(corpus, "w", encoding="utf-8") as f:
                f.write("\n".join(corpus_lines(config.data.train_file, config.data,
                                                config.data.train_split)) + "\n")
            tokenizer_lib.train([corpus], config.data.tokenizer_vocab_size, folder)
            os.remove(corpus)
        return pretrained.load_tokenizer(folder), folder
    if not folder:
        raise ValueError("config.data.tokenizer and config.model.pretrained are both empty: "
                         "a text task needs a tokenizer ('char', a folder, or the model's)")
    folder = str(pretrained.resolve_model_dir(folder))
    return pretrained.load_tokenizer(folder), folder


TFDS = "tfds:"
FETCH = "fetch:"


def local_file(path: str) -> str:
    """A file to open: "fetch:NAME/FILE" is FILE inside download NAME (lmx.data.fetch: fetched,
    checked against its sha256 and cached on first use); any other path is itself."""
    if not path.startswith(FETCH):
        return path
    from lmx.data import fetch  # noqa: PLC0415
    name, _, inner = path[len(FETCH):].partition("/")
    return os.path.join(fetch.fetch(name), inner)


def tfds_records(path: str, split: str, d: ml_collections.ConfigDict) -> list[dict]:
    """The lmx records of one split of "tfds:NAME" (lmx.data.tfds_sources; data.tfds_dir)."""
    return tfds_source(path, split, d).records()


def tfds_source(path: str, split: str, d: ml_collections.ConfigDict):
    """One split of "tfds:NAME" as a random-access sequence of lmx records, read one index
    at a time (a process reads only the records it asks for)."""
    from lmx.data import tfds_sources  # noqa: PLC0415
    if not split:
        raise ValueError(f"{path}: a tfds dataset needs a split name (data.*_split)")
    return tfds_sources.load(path[len(TFDS):], split, data_dir=d.tfds_dir or None)


def read_ratings(path: str, split: str, d: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """A ratings table (readers.read_ratings' columns): ratings.csv, or a tfds ratings split
    put in ratings.csv's order (by user, then movie; tfds shuffles its records)."""
    if not path.startswith(TFDS):
        return readers.read_ratings(local_file(path))
    rows = tfds_records(path, split, d)
    if not rows:
        raise ValueError(f"{path}[{split}]: no ratings")
    rows.sort(key=lambda r: (r["user_id"], r["item_id"], r["timestamp"]))
    dtypes = {"user_id": np.int64, "item_id": np.int64, "rating": np.float32,
              "timestamp": np.int64}
    return {k: np.asarray([r[k] for r in rows], dtype) for k, dtype in dtypes.items()}


def read_corpus(path: str, split: str, d: ml_collections.ConfigDict) -> str:
    """A raw text file's text, or the texts of a tfds split / the text column of a CSV or TSV
    file joined by newlines (a tfds dataset of whole texts: joined with nothing between)."""
    if path.startswith(TFDS):
        from lmx.data import tfds_sources  # noqa: PLC0415
        joiner = "" if path[len(TFDS):] in tfds_sources.WHOLE_TEXTS else "\n"
        return joiner.join(r["text"] for r in tfds_records(path, split, d))
    path = local_file(path)
    if path.endswith((".csv", ".tsv")):
        return "\n".join(corpus_lines(path, d)) + "\n"
    return readers.read_text(path)


def corpus_lines(path: str, d: ml_collections.ConfigDict, split: str = "train") -> list[str]:
    """Non-empty lines of a raw text file (or tfds texts), or the text column of a CSV / TSV."""
    if path.startswith(TFDS):
        return [line for line in read_corpus(path, split, d).splitlines() if line.strip()]
    path = local_file(path)
    if path.endswith((".csv", ".tsv")):
        return [r["text"] for r in readers.read_delimited(path, d.text_column, d.label_column)]
    return [line for line in readers.read_text(path).splitlines() if line.strip()]


def separate_validation(d: ml_collections.ConfigDict) -> bool:
    """A validation file, or a validation split of a tfds train set (files have no splits)."""
    return bool(d.validation_file or (d.validation_split and d.train_file.startswith(TFDS)))


def keep_labels(examples, names: list[str], keep: str) -> tuple[Any, list[str]]:
    """The examples whose label name is in the comma-separated `keep`, renumbered in that
    order (data.keep_labels); all of them when `keep` is empty."""
    if not keep:
        return examples, names
    kept = [k.strip() for k in keep.split(",") if k.strip()]
    unknown = [k for k in kept if k not in names]
    if unknown:
        raise ValueError(f"config.data.keep_labels: {unknown} are not labels of the data "
                         f"({names})")
    old_ids = np.asarray([names.index(k) for k in kept])
    index = np.flatnonzero(np.isin(examples.labels, old_ids))
    subset = examples.subset(index)
    new_id = np.full(len(names), -1, np.int32)
    new_id[old_ids] = np.arange(len(old_ids))
    subset.labels = new_id[subset.labels]
    return subset, kept


CARVE_MODES = ("label", "row", "tail")


def carve(items, d: ml_collections.ConfigDict, *, by: str) -> tuple[Any, Any]:
    """(train, validation): `d.validation_fraction` of one training set held out, fixed.

    by="label": a seeded (`d.split_seed`) fraction of every class, at least one example each
                (`stratified_split`); `items` has `.labels` and `.subset` (`Examples`).
    by="row":   a seeded random fraction of the rows (a list), both parts in file order.
    by="tail":  the contiguous last fraction of a text (or token stream): a causal LM must
                not train on the neighbours of its validation text.
    """
    if by == "label":
        train_index, valid_index = stratified_split(items.labels, d.validation_fraction,
                                                    d.split_seed)
        return items.subset(train_index), items.subset(valid_index)
    if by == "row":
        order = np.random.default_rng(d.split_seed).permutation(len(items))
        cut = int(round(d.validation_fraction * len(items)))
        return ([items[i] for i in np.sort(order[cut:])],
                [items[i] for i in np.sort(order[:cut])])
    if by == "tail":
        cut = int(len(items) * (1 - d.validation_fraction))
        return items[:cut], items[cut:]
    raise ValueError(f"carve(by={by!r}): expected one of {CARVE_MODES}")


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: `fraction` of every class (at least one) to validation."""
    rng = np.random.default_rng(seed)
    validation = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, int(round(fraction * len(members))))
        validation.extend(rng.permutation(members)[:take].tolist())
    validation = np.sort(np.asarray(validation, np.int64))
    train = np.setdiff1d(np.arange(len(labels)), validation)
    return train, validation
