"""HF tokenizer folders without transformers: the ids, specials, truncation and padding of AutoTokenizer.

    tok = load_tokenizer("path/to/checkpoint")        # tokenizer.json, vocab.txt or tokenizer.model
    batch = tok.encode_batch(texts, max_length=128, padding_side="left")   # int32 (B, T) arrays

Behaviour follows `transformers==5.24` `AutoTokenizer.from_pretrained(folder)` on the same files:
  * tokenizer.json goes through the `tokenizers` library as saved, its post-processor included:
    transformers ignores tokenizer_config.json's `add_bos_token` / `add_eos_token` when this
    file exists (tested: a GPT-2 folder with `add_bos_token: true` gets no bos).
  * vocab.txt alone is BERT WordPiece, built as transformers' `BertTokenizer` builds it.
  * tokenizer.model (sentencepiece) is supported for the Llama classes. transformers 5 does not run
    sentencepiece: it converts the model to a `tokenizers` BPE with no normalizer, a Metaspace
    pre-tokenizer (prefix "▁" only at the start of each sequence, and only when the text does
    not already start with a space, unless `legacy: true`), special tokens split out of the raw
    text, and bos/eos only where `add_bos_token` / `add_eos_token` say so (both default False).
    We run the `sentencepiece` library on the same pieces with its normalizer and dummy prefix
    switched off, and add the prefix and special tokens ourselves in the same places.
Padding: models without a pad token (GPT-2, Llama) pad with their eos id, unless `pad_token` is
given; the mask marks padding either way.

Axis legend: B batch, T padded length.
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Protocol, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, processors

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model")
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                        "cls_token", "mask_token")
SENTENCEPIECE_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")

Encoded = tuple[list[int], list[int]]  # (ids, token type ids) of one example


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not JSON ({error.msg})") from error


def _token_text(token: Any) -> str | None:
    """The content of a token entry of tokenizer_config.json (a string or an AddedToken dict)."""
    return token["content"] if isinstance(token, dict) else token


def _read_config(model_dir: pathlib.Path) -> dict[str, Any]:
    """special_tokens_map.json overridden by tokenizer_config.json, as transformers merges them."""
    return {**_read_json(model_dir / "special_tokens_map.json"),
            **_read_json(model_dir / "tokenizer_config.json")}


def _extra_special_tokens(config: dict[str, Any]) -> list[str]:
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if isinstance(extra, dict):  # transformers 5 may name them
        extra = list(extra.values())
    return [_token_text(token) for token in extra]


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: no space before punctuation and English clitics."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                           (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                           (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


def truncation_lengths(length_a: int, length_b: int | None, budget: int) -> tuple[int, int]:
    """How many tokens of each sequence `longest_first` keeps (the `tokenizers` algorithm).

    A lone sequence keeps `budget`; in a pair the shorter is kept whole when the longer can take
    the rest, else both get half (the second one the odd token).
    """
    if length_b is None:
        return min(length_a, budget), 0
    if length_a + length_b <= budget:
        return length_a, length_b
    short, long_ = sorted((length_a, length_b))
    long_ = short if short > budget else max(short, budget - short)
    if short + long_ > budget:
        short = budget // 2
        long_ = short + budget % 2
    return (short, long_) if length_a <= length_b else (long_, short)


class _Backend(Protocol):
    """What `Tokenizer` needs from a tokenization library."""

    def encode(self, texts: Sequence[str], pair_texts: Sequence[str] | None,
               max_length: int | None, add_special_tokens: bool) -> list[Encoded]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...

    def vocab_size(self) -> int: ...


class _TokenizersBackend:
    """A `tokenizers.Tokenizer` (tokenizer.json or WordPiece), truncated by the library itself."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, truncation_side: str, clean_up: bool):
        tokenizer.no_padding()  # tokenizer.json may carry its own padding and truncation
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self._truncation_side = truncation_side
        self._clean_up = clean_up

    def encode(self, texts, pair_texts, max_length, add_special_tokens):
        if max_length is None:
            self._tokenizer.no_truncation()
        else:
            self._tokenizer.enable_truncation(max_length, strategy="longest_first",
                                              direction=self._truncation_side)
        inputs = list(texts) if pair_texts is None else list(zip(texts, pair_texts, strict=True))
        encodings = self._tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)
        return [(e.ids, e.type_ids) for e in encodings]

    def decode(self, ids, skip_special_tokens):
        text = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self._clean_up else text

    def token_to_id(self, token):
        return self._tokenizer.token_to_id(token)

    def vocab_size(self):
        return self._tokenizer.get_vocab_size(with_added_tokens=True)


class _SentencePieceBackend:
    """A sentencepiece model run the way transformers 5 runs a Llama `tokenizer.model`."""

    def __init__(self, model_proto: bytes, *, added_tokens: dict[str, int],
                 bos_id: int | None, eos_id: int | None, prepend_scheme: str,
                 strip_decoded_space: bool, truncation_side: str):
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
        # transformers' Llama tokenizer has no normalizer and adds the "▁" prefix itself.
        proto.normalizer_spec.name = "identity"
        proto.normalizer_spec.precompiled_charsmap = b""
        proto.normalizer_spec.add_dummy_prefix = False
        proto.normalizer_spec.remove_extra_whitespaces = False
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self._added = added_tokens
        self._id_to_added = {i: token for token, i in added_tokens.items()}
        pattern = "|".join(re.escape(t) for t in sorted(added_tokens, key=len, reverse=True))
        self._added_re = re.compile(f"({pattern})") if pattern else None
        self._bos_id, self._eos_id = bos_id, eos_id
        self._prepend_scheme = prepend_scheme
        self._strip_decoded_space = strip_decoded_space
        self._truncation_side = truncation_side

    def _encode_text(self, text: str) -> list[int]:
        """Content ids of one sequence: added tokens split out, "▁" prefixed per the scheme."""
        parts = self._added_re.split(text) if self._added_re else [text]
        ids, offset = [], 0
        for part in parts:
            if part in self._added:
                ids.append(self._added[part])
            elif part:
                wants_prefix = (self._prepend_scheme == "always"
                                or (self._prepend_scheme == "first" and offset == 0))
                prefix = " " if wants_prefix and not part.startswith((" ", "▁")) else ""
                ids.extend(self._sp.encode(prefix + part))
            offset += len(part)
        return ids

    def _with_specials(self, ids: list[int], type_id: int) -> Encoded:
        ids = ([self._bos_id] if self._bos_id is not None else []) + ids
        ids = ids + ([self._eos_id] if self._eos_id is not None else [])
        return ids, [type_id] * len(ids)

    def _truncate(self, ids: list[int], keep: int) -> list[int]:
        if self._truncation_side == "left":
            return ids[len(ids) - keep:]
        return ids[:keep]

    def _encode_one(self, text: str, pair_text: str | None, max_length: int | None,
                    add_special_tokens: bool) -> Encoded:
        ids_a = self._encode_text(text)
        ids_b = None if pair_text is None else self._encode_text(pair_text)
        if max_length is not None:
            per_sequence = (self._bos_id is not None) + (self._eos_id is not None)
            num_special = per_sequence * (1 if ids_b is None else 2) if add_special_tokens else 0
            if max_length < num_special:
                raise ValueError(f"max_length={max_length} leaves no room for the "
                                 f"{num_special} special tokens")
            keep_a, keep_b = truncation_lengths(
                len(ids_a), None if ids_b is None else len(ids_b), max_length - num_special)
            ids_a = self._truncate(ids_a, keep_a)
            ids_b = None if ids_b is None else self._truncate(ids_b, keep_b)
        if not add_special_tokens:
            return ids_a + (ids_b or []), [0] * len(ids_a) + [1] * len(ids_b or [])
        ids, types = self._with_specials(ids_a, 0)
        if ids_b is not None:
            ids_b, types_b = self._with_specials(ids_b, 1)
            ids, types = ids + ids_b, types + types_b
        return ids, types

    def encode(self, texts, pair_texts, max_length, add_special_tokens):
        pairs = [None] * len(texts) if pair_texts is None else list(pair_texts)
        if len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pair_texts")
        return [self._encode_one(text, pair, max_length, add_special_tokens)
                for text, pair in zip(texts, pairs)]

    def decode(self, ids, skip_special_tokens):
        """Runs of pieces through sentencepiece, added tokens as their text, one space stripped."""
        pieces, run = [], []
        for i in list(ids) + [None]:
            if i is not None and i not in self._id_to_added:
                run.append(int(i))
                continue
            pieces.append(self._sp.decode(run))
            run = []
            if i is not None and not skip_special_tokens:
                pieces.append(self._id_to_added[i])
        text = "".join(pieces)
        return text[1:] if self._strip_decoded_space and text.startswith(" ") else text

    def token_to_id(self, token):
        if token in self._added:
            return self._added[token]
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i

    def vocab_size(self):
        return max([self._sp.get_piece_size()] + [i + 1 for i in self._added.values()])


class Tokenizer:
    """Encodes batches into padded int32 (B, T) arrays with the ids `AutoTokenizer` gives.

    A superset of `lmx.hf.pretrained.Tokenizer`; `vocab_size` counts added tokens (`len()` of the
    HF tokenizer).
    """

    def __init__(self, backend: _Backend, *, pad_id: int, bos_id: int | None,
                 eos_id: int | None, special_ids: Sequence[int]):
        self._backend = backend
        self._pad_id = pad_id
        self._bos_id, self._eos_id = bos_id, eos_id
        self._special_ids = tuple(sorted(set(special_ids)))

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size()

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of the named special tokens (bos, eos, unk, sep, pad, cls, mask) and extra ones."""
        return self._special_ids

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The ids of one text, untruncated."""
        [(ids, _)] = self._backend.encode([text], None, None, add_special_tokens)
        return list(ids)

    def encode_batch(self, texts: Sequence[str], max_length: int, *,
                     padding_side: str = "right", add_special_tokens: bool = True,
                     pair_texts: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """`ids`, `mask`, `token_types` (B, T): truncated to `max_length`, padded to the longest.

        Pairs truncate `longest_first`; `padding_side="left"` is for batched generation.
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}: expected 'right' or 'left'")
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a sequence of texts, not one string")
        encoded = self._backend.encode(list(texts), pair_texts, max_length, add_special_tokens)
        B, T = len(encoded), max([len(ids) for ids, _ in encoded], default=0)
        ids_BT = np.full((B, T), self._pad_id, np.int32)
        mask_BT = np.zeros((B, T), np.int32)
        token_types_BT = np.zeros((B, T), np.int32)
        for b, (ids, types) in enumerate(encoded):
            span = slice(T - len(ids), T) if padding_side == "left" else slice(0, len(ids))
            ids_BT[b, span] = ids
            mask_BT[b, span] = 1
            token_types_BT[b, span] = types
        return {"ids": ids_BT, "mask": mask_BT, "token_types": token_types_BT}

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """The text of `ids` (padding included unless skipped, as in transformers)."""
        return self._backend.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                    skip_special_tokens)


def _named_special_ids(backend: _Backend, config: dict[str, Any]) -> dict[str, int]:
    """`bos_token` -> id, ... for the named special tokens the configuration gives."""
    ids = {}
    for name in NAMED_SPECIAL_TOKENS:
        token = _token_text(config.get(name))
        if token is not None and backend.token_to_id(token) is not None:
            ids[name] = backend.token_to_id(token)
    return ids


def _from_tokenizer_json(path: pathlib.Path) -> tokenizers.Tokenizer:
    """As saved; transformers 5 drops tokenizer_config's add_bos/eos_token when this file exists."""
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers' own error names neither the file nor the cause
        raise ValueError(f"{path} is not a readable tokenizer.json (cut short or corrupt?): "
                         f"{error}") from error


def _from_vocab_txt(path: pathlib.Path, config: dict[str, Any]) -> tokenizers.Tokenizer:
    """WordPiece with BERT's normalizer, pre-tokenizer and [CLS] A [SEP] (B [SEP]) template."""
    tokens = {name: _token_text(config.get(name, default)) for name, default in (
        ("unk_token", "[UNK]"), ("sep_token", "[SEP]"), ("pad_token", "[PAD]"),
        ("cls_token", "[CLS]"), ("mask_token", "[MASK]"))}
    config.update({name: token for name, token in tokens.items() if name not in config})
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordPiece.from_file(str(path), unk_token=tokens["unk_token"]))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"), lowercase=config.get("do_lower_case", True))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([t for t in tokens.values() if tokenizer.token_to_id(t) is not None])
    cls, sep = tokens["cls_token"], tokens["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))])
    return tokenizer


def _sentencepiece_backend(path: pathlib.Path, config: dict[str, Any]) -> _SentencePieceBackend:
    """The Llama-class reading of a sentencepiece model (see the module docstring)."""
    from sentencepiece import sentencepiece_model_pb2

    tokenizer_class = config.get("tokenizer_class")
    if tokenizer_class not in SENTENCEPIECE_CLASSES:
        raise ValueError(f"{path}: tokenizer_class={tokenizer_class!r}; lmx reads sentencepiece "
                         f"models of {SENTENCEPIECE_CLASSES} only (no tokenizer.json here)")
    model_proto = path.read_bytes()
    proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
    pieces = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    spec = proto.trainer_spec
    for name, piece, piece_id in (("bos_token", spec.bos_piece, spec.bos_id),
                                  ("eos_token", spec.eos_piece, spec.eos_id),
                                  ("unk_token", spec.unk_piece, spec.unk_id)):
        if piece_id >= 0:
            config.setdefault(name, piece)
    added = {p.piece: i for i, p in enumerate(proto.pieces) if p.type in (3, 4)}  # control, user
    for token_id, entry in (config.get("added_tokens_decoder") or {}).items():
        added[_token_text(entry)] = int(token_id)
    for name in NAMED_SPECIAL_TOKENS:
        token = _token_text(config.get(name))
        if token is not None and token in pieces:
            added.setdefault(token, pieces[token])
    add_prefix_space = config.get("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else add_prefix_space
    scheme = "never" if not add_prefix_space else ("always" if config.get("legacy") else "first")
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    return _SentencePieceBackend(
        model_proto, added_tokens=added,
        bos_id=added.get(bos) if config.get("add_bos_token") else None,
        eos_id=added.get(eos) if config.get("add_eos_token") else None,
        prepend_scheme=scheme, strip_decoded_space=add_prefix_space,
        truncation_side=config.get("truncation_side", "right"))


def _backend(model_dir: pathlib.Path, config: dict[str, Any]) -> _Backend:
    """The first of TOKENIZER_FILES present, read as transformers reads it."""
    side = config.get("truncation_side", "right")
    if (model_dir / "tokenizer.json").is_file():
        tokenizer = _from_tokenizer_json(model_dir / "tokenizer.json")
        is_bpe = isinstance(tokenizer.model, tokenizers.models.BPE)
        clean_up = bool(config.get("clean_up_tokenization_spaces")) and not is_bpe
        return _TokenizersBackend(tokenizer, side, clean_up)
    if (model_dir / "vocab.txt").is_file():
        tokenizer = _from_vocab_txt(model_dir / "vocab.txt", config)
        return _TokenizersBackend(tokenizer, side,
                                  bool(config.get("clean_up_tokenization_spaces")))
    if (model_dir / "tokenizer.model").is_file():
        return _sentencepiece_backend(model_dir / "tokenizer.model", config)
    raise FileNotFoundError(f"no tokenizer in {model_dir}: looked for {', '.join(TOKENIZER_FILES)}")


def load_tokenizer(model_dir: str | pathlib.Path, pad_token: str | None = None) -> Tokenizer:
    """The tokenizer of a HF checkpoint folder, as `transformers.AutoTokenizer` would load it.

    Args:
      model_dir: a folder with tokenizer.json, vocab.txt or tokenizer.model (first one wins),
        and optionally tokenizer_config.json and special_tokens_map.json.
      pad_token: overrides the folder's pad token. Without either, padding uses the eos id
        (GPT-2 and Llama have no pad token); the mask still marks the padding.
    """
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a directory (looked for "
                                f"{', '.join(TOKENIZER_FILES)} in it)")
    config = _read_config(model_dir)
    backend = _backend(model_dir, config)
    if pad_token is not None:
        if backend.token_to_id(pad_token) is None:
            raise ValueError(f"pad_token {pad_token!r} is not in the vocabulary of {model_dir}")
        config["pad_token"] = pad_token
    named = _named_special_ids(backend, config)
    pad_id = named.get("pad_token", named.get("eos_token"))
    if pad_id is None:
        raise ValueError(f"{model_dir} has neither a pad nor an eos token; pass pad_token=")
    extra = [backend.token_to_id(t) for t in _extra_special_tokens(config)]
    return Tokenizer(backend, pad_id=pad_id, bos_id=named.get("bos_token"),
                     eos_id=named.get("eos_token"),
                     special_ids=list(named.values()) + [i for i in extra if i is not None])
