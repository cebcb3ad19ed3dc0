"""An experiment's data: the local copy under ../shared/data when it is there (a fast path, no
network), else a source any user with internet can read (a tfds catalog name or a
checksummed download), with the same config meaning (kind, splits, label names)."""
from __future__ import annotations

import os
from typing import Any

# ../shared/data beside the repository; $LMX_SHARED_DATA points elsewhere.
LOCAL_ROOT = os.environ.get("LMX_SHARED_DATA") or os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data"))


PHRASEBANK = "fetch:financial_phrasebank/FinancialPhraseBank-v1.0/"  # not in tfds' catalog

# name -> (folder under LOCAL_ROOT, its files and columns, the fallback): every experiment's
# data, in one place. Local files are the ones /work/shared/data/*/SOURCE.md describes.
DATASETS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "sst2": ("sst2",
             {"train_file": "train.tsv", "validation_file": "dev.tsv",
              "text_column": "sentence", "label_column": "label"},
             {"train_file": "tfds:glue/sst2", "validation_file": "tfds:glue/sst2",
              "validation_split": "validation"}),
    "conll2003": ("conll2003",  # local: IOB1, converted by the reader; tfds: already BIO
                  {"train_file": "eng.train", "validation_file": "eng.testa"},
                  {"train_file": "tfds:conll2003", "validation_file": "tfds:conll2003",
                   "validation_split": "validation"}),
    "clinc150": ("clinc150",  # data_full.json's "train" holds oos_train too (include_oos)
                 {"train_file": "data_full.json", "train_split": "train",
                  "validation_split": "val"},
                 {"train_file": "tfds:clinc_oos", "train_split": "train+train_oos",
                  "validation_split": "validation+validation_oos"}),
    "tiny_shakespeare": ("tiny_shakespeare",  # the whole text either way; validation carved
                         {"train_file": "input.txt"},
                         {"train_file": "tfds:tiny_shakespeare",
                          "train_split": "train+validation+test"}),
    "movielens": ("movielens_ml_latest_small",
                  {"train_file": "ratings.csv"},
                  {"train_file": "tfds:movielens/latest-small-ratings"}),
    "phrasebank_allagree": ("financial_phrasebank",
                            {"train_file": "Sentences_AllAgree.txt"},
                            {"train_file": PHRASEBANK + "Sentences_AllAgree.txt"}),
    "phrasebank_50agree": ("financial_phrasebank",
                           {"train_file": "Sentences_50Agree.txt"},
                           {"train_file": PHRASEBANK + "Sentences_50Agree.txt"}),
}


def data(name: str) -> dict[str, Any]:
    """`config.data` keys of DATASETS[name]: the local copy if there, else the fallback."""
    if name not in DATASETS:
        raise ValueError(f"lmx.data.catalog: unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return local_or(*DATASETS[name])


def local_or(folder: str, local: dict[str, Any], fallback: dict[str, Any]) -> dict[str, Any]:
    """`config.data` keys: `local`, whose `*_file` values are joined to LOCAL_ROOT/folder, when
    every one of those files exists; else `fallback` as given.

    Keys either side leaves out keep their defaults, so the two sides name every key that
    differs (columns, splits): see DATASETS.
    """
    root = os.path.join(LOCAL_ROOT, folder)
    keys = {k: os.path.join(root, v) if k.endswith("_file") and v else v
            for k, v in local.items()}
    files = [v for k, v in keys.items() if k.endswith("_file") and v]
    return keys if files and all(os.path.isfile(f) for f in files) else dict(fallback)
