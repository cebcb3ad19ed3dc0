"""tfds catalog names through `tfds.data_source` under `tfds.testing.mock_data` (no network,
no TensorFlow): each maps to the records of lmx.data.readers."""
import sys

import numpy as np
import pytest

from lmx.data import tfds_sources

tfds = pytest.importorskip("tensorflow_datasets")

EXPECTED_KEYS = {
    "conll2003": {"words", "tags", "document"},
    "glue/sst2": {"text", "label"},
    "imdb_reviews": {"text", "label"},
    "cifar10": {"image", "label"},
    "tiny_shakespeare": {"text"},
    "lm1b": {"text"},
    "clinc_oos": {"text", "label"},
}


@pytest.mark.parametrize("name", [n for n in EXPECTED_KEYS if n != "conll2003"])
def test_mock_data_source_maps_to_records(name):
    with tfds.testing.mock_data(num_examples=4):
        source = tfds_sources.load(name, "train")
        records = source.records()
    assert len(records) == 4
    for record in records:
        assert set(record) == EXPECTED_KEYS[name]
        if "text" in record:
            assert isinstance(record["text"], str) and record["text"]
    if name == "glue/sst2":
        assert {r["label"] for r in records} <= {"0", "1"}
    if name == "imdb_reviews":
        assert {r["label"] for r in records} <= {"neg", "pos"}
    if name == "cifar10":
        assert records[0]["image"].shape == (32, 32, 3) and records[0]["image"].dtype == np.uint8
        assert all(0 <= r["label"] < 10 for r in records)
    assert "tensorflow" not in sys.modules  # array_record, no TF at read time


def test_conll2003_mock_with_consistent_examples():
    """tfds' random mock draws `tokens` and `ner` lengths independently, so this test gives
    the mock consistent examples through `as_data_source_fn` (the rest of the
    `tfds.data_source` path - name resolution, builder, features - is the real one)."""
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(3):
        n = int(rng.integers(1, 8))
        examples.append({"tokens": np.asarray([f"w{i}".encode() for i in range(n)], object),
                         "ner": rng.integers(0, 9, size=n), "pos": np.zeros(n, np.int64),
                         "chunks": np.zeros(n, np.int64)})
    fake = lambda self, split, **kwargs: examples  # noqa: E731
    with tfds.testing.mock_data(num_examples=3, as_data_source_fn=fake):
        records = tfds_sources.load("conll2003", "train").records()
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    for record, example in zip(records, examples):
        assert record["words"] == [w.decode() for w in example["tokens"]]
        assert record["tags"] == [names[i] for i in example["ner"]]


def test_conll2003_random_mock_lengths_are_checked():
    bad = [{"tokens": np.asarray([b"a", b"b"], object), "ner": np.asarray([0]),
            "pos": np.zeros(2), "chunks": np.zeros(2)}]
    with tfds.testing.mock_data(num_examples=1, as_data_source_fn=lambda self, split, **k: bad):
        source = tfds_sources.load("conll2003", "train")
        with pytest.raises(ValueError, match=r"conll2003\[train\]\[0\]: 2 tokens but 1 ner"):
            source[0]


def test_movielens_ids_must_be_integers():
    """tfds keeps MovieLens' ids as strings; the random mock's are not numbers."""
    with tfds.testing.mock_data(num_examples=1):
        source = tfds_sources.load("movielens/latest-small-ratings", "train")
        with pytest.raises(ValueError, match=r"\[train\]\[0\]: expected integer user_id"):
            source[0]


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="lmx maps"):
        tfds_sources.load("mnist_corrupted", "train")
