"""tfds catalog datasets by name -> the records of lmx.data.readers, read with `tfds.data_source`.

The real path for users with internet: `tfds.data_source` reads prepared array_record files
without TensorFlow (preparing a dataset the first time may need the `tfds-prepare` extra).
Records are mapped lazily, one index at a time:
  conll2003          {"words", "tags" (BIO strings: tfds' copy is already IOB2), "document": -1}
  glue/sst2          {"text", "label"}   label "0" / "1" as in GLUE's TSV ("-1" on test)
  imdb_reviews       {"text", "label"}   label "neg" / "pos" (tfds' class names)
  cifar10            {"image": uint8 (32, 32, 3), "label": int}
  tiny_shakespeare   {"text"}            one record per split (the whole text; WHOLE_TEXTS)
  lm1b               {"text"}            one sentence per record
  clinc_oos          {"text", "label"}   label = intent_name: CLINC150's intent, "oos" on the
                                         *_oos splits (intent 150), as readers.read_clinc150
  movielens/latest-small-ratings  {"user_id", "item_id", "timestamp": int, "rating": float}
                                         one rating per record (readers.read_ratings' columns)
A split may join several with "+" (tfds' split syntax, read in order): "train+train_oos".
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np

Record = dict[str, Any]


def _text(value: Any) -> str:
    value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _conll(example: dict, features, where: str) -> Record:
    words = [_text(w) for w in np.asarray(example["tokens"]).reshape(-1)]
    tag_ids = np.asarray(example["ner"]).reshape(-1)
    if len(words) != len(tag_ids):
        raise ValueError(f"{where}: {len(words)} tokens but {len(tag_ids)} ner tags")
    names = features["ner"].feature.names
    return {"words": words, "tags": [names[int(i)] for i in tag_ids], "document": -1}


def _sst2(example: dict, features, where: str) -> Record:
    return {"text": _text(example["sentence"]), "label": str(int(example["label"]))}


def _imdb(example: dict, features, where: str) -> Record:
    return {"text": _text(example["text"]),
            "label": features["label"].names[int(example["label"])]}


def _image(example: dict, features, where: str) -> Record:
    image = np.asarray(example["image"], np.uint8)
    if image.ndim != 3:
        raise ValueError(f"{where}: expected an (H, W, C) image, got shape {image.shape}")
    return {"image": image, "label": int(example["label"])}


def _plain_text(example: dict, features, where: str) -> Record:
    return {"text": _text(example["text"])}


def _clinc(example: dict, features, where: str) -> Record:
    return {"text": _text(example["text"]), "label": _text(example["intent_name"])}


def _rating(example: dict, features, where: str) -> Record:
    try:  # tfds keeps MovieLens' ids as strings
        user, item = int(_text(example["user_id"])), int(_text(example["movie_id"]))
    except ValueError:
        raise ValueError(f"{where}: expected integer user_id / movie_id, got "
                         f"{_text(example['user_id'])!r} / {_text(example['movie_id'])!r}"
                         ) from None
    return {"user_id": user, "item_id": item, "rating": float(example["user_rating"]),
            "timestamp": int(example["timestamp"])}


# name -> (tfds module whose import registers the builder, or None; record mapping)
CATALOG: dict[str, tuple[str | None, Callable[[dict, Any, str], Record]]] = {
    "conll2003": ("tensorflow_datasets.text", _conll),
    "glue/sst2": ("tensorflow_datasets.text", _sst2),
    "imdb_reviews": (None, _imdb),
    "cifar10": (None, _image),
    "tiny_shakespeare": (None, _plain_text),
    "lm1b": (None, _plain_text),
    "clinc_oos": ("tensorflow_datasets.text", _clinc),
    "movielens/latest-small-ratings": ("tensorflow_datasets.structured", _rating),
}
# One record per split holding a whole text: a multi-split read joins them with nothing
# between (tiny_shakespeare "train+validation+test" is char-rnn's input.txt byte for byte).
WHOLE_TEXTS = ("tiny_shakespeare",)


class Source:
    """A random-access view of a tfds data source whose items are lmx records."""

    def __init__(self, name: str, split: str, source, features, to_record):
        self.name, self.split = name, split
        self._source, self._features, self._to_record = source, features, to_record

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Record:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}[{self.split}]: index {index} of {len(self)}")
        return self._to_record(self._source[index], self._features,
                               f"tfds {self.name}[{self.split}][{index}]")

    def records(self) -> list[Record]:
        return [self[i] for i in range(len(self))]


def load(name: str, split: str, *, data_dir: str | None = None, download: bool = True
         ) -> Source:
    """`tfds.data_source(name, split=split)` mapped to lmx records (see the module docstring)."""
    if name not in CATALOG:
        raise ValueError(f"tfds dataset {name!r}: lmx maps {sorted(CATALOG)}")
    import tensorflow_datasets as tfds  # noqa: PLC0415  (slow import; only when used)

    module, to_record = CATALOG[name]
    if module is not None:  # builders outside tfds' lazily registered `datasets/` folder
        importlib.import_module(module)
    features = tfds.builder(name, data_dir=data_dir).info.features
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    return Source(name, split, source, features, to_record)
