"""Examples and the one split carver: label ids name the bad label (and its line), the
stratified carve is fixed, disjoint and covers every class, row and tail carves are fixed.
(CSV reading is tests/test_readers.py; batching tests/test_batching.py.)"""
import ml_collections
import numpy as np
import pytest

from lmx.data import examples as data, sources


def test_unknown_label_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"x\.csv: labels not in the label set: \['zzz'\]"):
        data.label_ids(["a", "zzz"], ["a", "b"], "x.csv")
    with pytest.raises(ValueError, match=r"x\.csv:7: labels not in the label set"):
        data.label_ids(["a", "zzz"], ["a", "b"], "x.csv", lines=[2, 7])
    np.testing.assert_array_equal(data.label_ids(["b", "a"], ["a", "b"], "x.csv"), [1, 0])


def test_stratified_split_is_fixed_disjoint_and_covers_every_class():
    labels = np.repeat(np.arange(5), [3, 10, 20, 7, 40])
    train, valid = sources.stratified_split(labels, 0.1, seed=0)
    _, again_valid = sources.stratified_split(labels, 0.1, seed=0)
    np.testing.assert_array_equal(valid, again_valid)
    assert not set(train) & set(valid)
    assert len(train) + len(valid) == len(labels)
    assert set(labels[valid]) == set(range(5))


def _d(fraction=0.25, seed=0):
    return ml_collections.ConfigDict({"validation_fraction": fraction, "split_seed": seed})


def test_carve_by_label_subsets_the_stratified_split():
    examples = data.synthetic(60, vocab_size=50, max_length=10, num_labels=3, seed=0)
    train, valid = sources.carve(examples, _d(), by="label")
    _, valid_index = sources.stratified_split(examples.labels, 0.25, 0)
    np.testing.assert_array_equal(valid.labels, examples.labels[valid_index])
    assert len(train) + len(valid) == 60 and set(valid.labels) == {0, 1, 2}


def test_carve_by_row_is_seeded_and_keeps_file_order():
    rows = list(range(40))
    train, valid = sources.carve(rows, _d(), by="row")
    assert len(valid) == 10 and sorted(train + valid) == rows
    assert train == sorted(train) and valid == sorted(valid)
    assert sources.carve(rows, _d(), by="row") == (train, valid)
    assert sources.carve(rows, _d(seed=1), by="row")[1] != valid


def test_carve_by_tail_is_the_contiguous_end():
    text = "abcdefghij"
    assert sources.carve(text, _d(0.3), by="tail") == ("abcdefg", "hij")
    with pytest.raises(ValueError, match="expected one of"):
        sources.carve(text, _d(), by="random")
