"""The one regex helper: first match wins, every leaf covered, dead patterns are errors."""
import numpy as np
import pytest

from lmx import paths
from lmx.train import optim

TREE = {"params": {"layer_0": {"attention": {"query": {"kernel": np.zeros((2, 2)),
                                                       "bias": np.zeros(2)}}},
                   "head": {"classifier": {"kernel": np.zeros((2, 3))}}},
        "peft": {"layer_0": {"attention": {"query": {"lora_a": np.zeros((2, 1))}}}}}


def test_first_match_wins_and_default():
    labels = paths.flatten(paths.label(TREE, [(r"params/head/.*", "a"), (r"params/.*", "b")],
                                       what="t", default="c"))
    assert labels == {"params/head/classifier/kernel": "a",
                      "params/layer_0/attention/query/bias": "b",
                      "params/layer_0/attention/query/kernel": "b",
                      "peft/layer_0/attention/query/lora_a": "c"}


def test_uncovered_leaf_is_an_error_without_default():
    with pytest.raises(ValueError, match="no rule covers parameter 'peft/"):
        paths.label(TREE, [(r"params/.*", 1)], what="t")


def test_dead_pattern_names_itself_and_nearby_paths():
    with pytest.raises(ValueError) as err:
        paths.select(TREE, [r"params/layer_0/attention/qeury/kernel"], what="config.peft.lora.targets")
    message = str(err.value)
    assert "config.peft.lora.targets" in message and "qeury" in message
    assert "params/layer_0/attention/query/kernel" in message


def test_trainable_labels_cover_every_leaf():
    labels = paths.flatten(optim.trainable_labels(TREE, [r"peft/.*", r"params/head/.*"], what="t"))
    assert set(labels) == set(paths.flatten(TREE))
    assert labels == {"params/head/classifier/kernel": optim.TRAIN,
                      "params/layer_0/attention/query/bias": optim.FREEZE,
                      "params/layer_0/attention/query/kernel": optim.FREEZE,
                      "peft/layer_0/attention/query/lora_a": optim.TRAIN}
