"""Classification input pipeline: CSV files -> token ids (once) -> bucketed, padded batches;
images (scikit-learn's bundled digits) -> batches.

Order is a pure function of (seed, epoch), so the position in the stream is just the
step number and a resumed run sees exactly the batches the interrupted one would have.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from typing import Iterator, Sequence

import numpy as np


@dataclasses.dataclass
class Examples:
    """Tokenized examples: unpadded id arrays, token types, integer labels."""
    ids: list[np.ndarray]
    token_types: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "Examples":
        return Examples([self.ids[i] for i in index], [self.token_types[i] for i in index],
                        self.labels[index])

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray([len(x) for x in self.ids])

    def batch(self, index: Sequence[int], batch_size: int, pad_multiple: int, pad_id: int
              ) -> dict[str, np.ndarray]:
        return _pad_batch(self, index, batch_size, pad_multiple, pad_id)


@dataclasses.dataclass
class ImageExamples:
    """Images (N, H, W, C) float32 and integer labels."""
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "ImageExamples":
        return ImageExamples(self.images[index], self.labels[index])

    @property
    def lengths(self) -> np.ndarray:
        return np.zeros(len(self), np.int64)

    def batch(self, index: Sequence[int], batch_size: int, pad_multiple: int = 1,
              pad_id: int = 0) -> dict[str, np.ndarray]:
        images = np.zeros((batch_size, *self.images.shape[1:]), np.float32)
        labels = np.zeros((batch_size,), np.int32)
        weights = np.zeros((batch_size,), np.float32)
        images[:len(index)], labels[:len(index)] = self.images[index], self.labels[index]
        weights[:len(index)] = 1.0
        return {"images": images, "labels": labels, "weights": weights}


def digits(image_size: int) -> ImageExamples:
    """scikit-learn's bundled handwritten digits (UCI, 1,797 8x8 images), upscaled to RGB."""
    from sklearn.datasets import load_digits  # noqa: PLC0415  (bundled: no download)
    bunch = load_digits()
    scale = image_size // 8
    if scale * 8 != image_size:
        raise ValueError(f"config.model.image_size={image_size} must be a multiple of 8")
    images = np.kron(bunch.images / 16.0, np.ones((1, scale, scale)))  # nearest upsampling
    images = np.repeat(images[..., None], 3, axis=-1).astype(np.float32)
    return ImageExamples((images - 0.5) / 0.5, bunch.target.astype(np.int32))


def _read_text(path: str) -> str:
    """A file's text (UTF-8, optional BOM); undecodable bytes are an error naming the line."""
    with open(path, "rb") as f:
        blob = f.read()
    try:
        return blob.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = blob[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None


def read_label_names(path: str) -> list[str]:
    """A JSON list of distinct label names."""
    try:
        names = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise ValueError(f"{path}:1: expected a non-empty JSON list of label names (strings)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}:1: duplicate label names {duplicates[:10]}")
    return names


def read_csv_classification(path: str, text_column: str, label_column: str, *,
                            with_lines: bool = False):
    """Texts and label strings (and, `with_lines`, each row's line number) from a CSV with a
    header. Quoted newlines and CRLF are handled; every malformed input is a ValueError
    naming `path:line`."""
    texts, labels, lines = [], [], []
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        header = reader.fieldnames or []
        for column in (text_column, label_column):
            if column not in header:
                raise ValueError(f"{path}:1: no column {column!r} in header {header}")
        for row in reader:
            if None in row or any(row[c] is None for c in header):
                raise ValueError(f"{path}:{reader.line_num}: expected {len(header)} fields "
                                 f"({','.join(header)}), got a malformed row")
            texts.append(row[text_column])
            labels.append(row[label_column])
            lines.append(reader.line_num)
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: {e}") from None
    if not texts:
        raise ValueError(f"{path}:{max(reader.line_num, 1)}: no examples after the header")
    return (texts, labels, lines) if with_lines else (texts, labels)


def label_ids(labels: Sequence[str], names: Sequence[str], path: str,
              lines: Sequence[int] | None = None) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    unknown = [i for i, label in enumerate(labels) if label not in index]
    if unknown:
        where = f"{path}:{lines[unknown[0]]}" if lines is not None else path
        found = sorted({labels[i] for i in unknown})
        raise ValueError(f"{where}: labels not in the label set: {found[:10]}")
    return np.asarray([index[label] for label in labels], np.int32)


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list, list]:
    """Token ids (with special tokens, truncated) and token types, unpadded."""
    encoded = tokenizer.encode_batch(list(texts), max_length=max_length)
    lengths = encoded["mask"].sum(-1)
    ids = [encoded["ids"][i, :n] for i, n in enumerate(lengths)]
    types = [encoded["token_types"][i, :n] for i, n in enumerate(lengths)]
    return ids, types


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A fixed split: `fraction` of every class (at least one) goes to validation."""
    rng = np.random.default_rng(seed)
    validation = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, int(round(fraction * len(members))))
        validation.extend(rng.permutation(members)[:take].tolist())
    validation = np.sort(np.asarray(validation, np.int64))
    train = np.setdiff1d(np.arange(len(labels)), validation)
    return train, validation


def _pad_batch(examples: Examples, index: Sequence[int], batch_size: int, pad_multiple: int,
               pad_id: int) -> dict[str, np.ndarray]:
    longest = max(len(examples.ids[i]) for i in index)
    length = pad_multiple * math.ceil(longest / pad_multiple)
    ids = np.full((batch_size, length), pad_id, np.int32)
    types = np.zeros((batch_size, length), np.int32)
    mask = np.zeros((batch_size, length), bool)
    labels = np.zeros((batch_size,), np.int32)
    weights = np.zeros((batch_size,), np.float32)
    for row, i in enumerate(index):
        n = len(examples.ids[i])
        ids[row, :n], types[row, :n], mask[row, :n] = examples.ids[i], examples.token_types[i], True
        labels[row], weights[row] = examples.labels[i], 1.0
    return {"ids": ids, "mask": mask, "token_types": types, "labels": labels, "weights": weights}


def epoch_batches(examples: Examples, batch_size: int, *, seed: int, epoch: int,
                  pad_multiple: int, bucket_batches: int, pad_id: int
                  ) -> list[list[int]]:
    """The batches (example indices) of one training epoch: shuffled, then length-bucketed.

    Full batches only, so every step has the same global batch size.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    lengths = examples.lengths
    window = batch_size * max(bucket_batches, 1)
    batches = []
    for start in range(0, len(order) - batch_size + 1, window):
        chunk = order[start:start + window]
        chunk = chunk[:len(chunk) - len(chunk) % batch_size]
        chunk = sorted(chunk, key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng = np.random.default_rng([seed, epoch, 1])
    return [batches[i] for i in rng.permutation(len(batches))]


def steps_per_epoch(examples: Examples, batch_size: int) -> int:
    return len(examples) // batch_size


def train_batches(examples: Examples, batch_size: int, *, seed: int, start_step: int,
                  pad_multiple: int, bucket_batches: int, pad_id: int
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Endless stream of training batches, starting at `start_step` (exact resume)."""
    per_epoch = steps_per_epoch(examples, batch_size)
    if per_epoch == 0:
        raise ValueError(f"{len(examples)} training examples is fewer than batch size {batch_size}")
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        batches = epoch_batches(examples, batch_size, seed=seed, epoch=epoch,
                                pad_multiple=pad_multiple, bucket_batches=bucket_batches,
                                pad_id=pad_id)
        for index in batches[offset:]:
            yield examples.batch(index, batch_size, pad_multiple, pad_id)
        epoch, offset = epoch + 1, 0


def eval_batches(examples: Examples, batch_size: int, *, pad_multiple: int, pad_id: int
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, sorted by length; the last batch padded with weight-0 rows."""
    order = np.argsort(examples.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield examples.batch(order[start:start + batch_size], batch_size, pad_multiple, pad_id)


def synthetic(num_examples: int, vocab_size: int, max_length: int, num_labels: int,
              seed: int) -> Examples:
    """A learnable toy task: the label is the count of trigger token 3, modulo num_labels."""
    rng = np.random.default_rng(seed)
    ids, types, labels = [], [], []
    for _ in range(num_examples):
        length = int(rng.integers(4, max_length + 1))
        row = rng.integers(4, vocab_size, size=length).astype(np.int32)
        label = int(rng.integers(num_labels))
        row[rng.choice(np.arange(1, length), size=label, replace=False)] = 3
        ids.append(row)
        types.append(np.zeros(length, np.int32))
        labels.append(label)
    return Examples(ids, types, np.asarray(labels, np.int32))
