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


def test_grad_clip_norm_zero_means_no_clipping():
    """`train.grad_clip_norm=0` turns clipping off; optax's clip_by_global_norm(0) would scale
    every update to 0 and nothing would ever train."""
    import jax.numpy as jnp
    import optax

    from lmx.config import base_config

    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([30.0, -40.0, 0.0])}
    labels = {"w": optim.TRAIN}
    for clip, want in ((0.0, optax.adamw(1e-1, weight_decay=0.0)),
                       (1.0, optax.chain(optax.clip_by_global_norm(1.0),
                                         optax.adamw(1e-1, weight_decay=0.0)))):
        train = base_config().train
        train.learning_rate, train.grad_clip_norm, train.weight_decay = 1e-1, clip, 0.0
        train.warmup_fraction = 0.0  # linear decay: the first step's rate is the peak
        tx = optim.make_optimizer(train, labels, total_steps=10)
        got, _ = tx.update(grads, tx.init(params), params)
        expected, _ = want.update(grads, want.init(params), params)
        np.testing.assert_allclose(got["w"], expected["w"], rtol=1e-6)
        assert np.abs(got["w"][:2]).min() > 0.05  # both really move
