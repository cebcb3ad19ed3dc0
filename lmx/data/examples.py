"""Classification examples held as arrays: token ids (tokenized once) or images, integer labels;
label names -> ids; the toy data sets (synthetic, scikit-learn's digits).

Both containers index to the dicts `lmx.data.batching` batches: `Examples[i]` ->
{"ids", "token_types", "labels"}, `ImageExamples[i]` -> {"images", "labels"}.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

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

    def __getitem__(self, i: int) -> dict:
        return {"ids": self.ids[i], "token_types": self.token_types[i], "labels": self.labels[i]}


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

    def __getitem__(self, i: int) -> dict:
        return {"images": self.images[i], "labels": self.labels[i]}


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
