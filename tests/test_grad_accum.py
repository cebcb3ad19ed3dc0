"""Gradient accumulation (config.train.grad_accum_steps) equals one step on the whole batch.

Convention under test: the accumulated loss is the whole batch's token-weighted mean (each
real token counts once, whichever micro-batch holds it), not a mean of micro-batch means.
"""
import flax.linen as nn
import jax
import numpy as np
import pytest

from lmx import config as config_lib, paths
from lmx.scale import sharding
from lmx.train import build, step

B, T = 16, 8


def _config(scan_layers=False, accum=1, mesh=(("data", 1), ("fsdp", 1), ("tensor", 1)),
            preset="data_parallel"):
    c = config_lib.base_config()
    c.model.size, c.model.task = "llama-tiny", "causal_lm"
    c.model.scan_layers = scan_layers
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    c.peft.lora.targets = (r"params/layer_\d+/attention/(query|value)/kernel",)
    c.peft.trainable = (r"peft/.*",)  # LoRA only: the base and the LM head stay frozen
    c.train.batch_size, c.train.grad_accum_steps = B, accum
    c.train.warmup_fraction, c.train.learning_rate = 0.0, 1e-2
    c.mesh, c.sharding = mesh, preset
    return c


def _batch():
    """Micro-batches of 4 (rows i, i + 4, ...) hold very different numbers of real tokens:
    rows 0 mod 4 are whole, rows 1 mod 4 have two labelled tokens, rows 2 mod 4 are filler."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 128, (B, T)).astype(np.int32)
    labels = rng.integers(0, 128, (B, T)).astype(np.int32)
    labels[1::4, 2:] = -100
    weights = np.ones(B, np.float32)
    weights[2::4] = 0.0
    return {"ids": ids, "mask": np.ones((B, T), bool), "token_types": np.zeros_like(ids),
            "labels": labels, "weights": weights}


def _built(config, devices):
    mesh = sharding.make_mesh(config.mesh, devices)
    return build.build(config, 0, mesh=mesh, rules=sharding.rules_for(config.sharding))


def _grads(built, batch, accum):
    rules = built.rules
    with jax.set_mesh(built.mesh), nn.logical_axis_rules(rules):
        batch = {k: jax.device_put(v, sharding.batch_sharding(built.mesh, rules, v.ndim))
                 for k, v in batch.items()}
        if accum == 1:
            fn = lambda s, f, b: step.trainable_grads(s, f, b, jax.random.key(1),
                                                      model=built.module)
        else:
            fn = lambda s, f, b: step.accumulated_grads(s, f, b, jax.random.key(1),
                                                        model=built.module, steps=accum)
        loss, aux, _, grads = jax.jit(fn)(built.state, built.frozen, batch)
    return float(loss), jax.tree.map(np.asarray, aux), jax.tree.map(np.asarray, grads)


def _assert_trees_close(a, b, atol):
    flat_a, flat_b = paths.flatten(a), paths.flatten(b)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_allclose(flat_a[k], flat_b[k], rtol=0, atol=atol, err_msg=k)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_accumulated_gradient_equals_the_whole_batch(scan_layers):
    built = _built(_config(scan_layers), jax.devices()[:1])
    batch = _batch()
    loss, aux, grads = _grads(built, batch, 1)
    loss4, aux4, grads4 = _grads(built, batch, 4)
    assert abs(loss4 - loss) < 1e-6 and aux4["count"] == aux["count"] == 4 * T + 4 * 2 + 4 * T
    _assert_trees_close(grads4, grads, 1e-6)
    assert max(np.abs(g).max() for g in jax.tree.leaves(grads)) > 1e-3  # not all zero
    # Only LoRA leaves are differentiated (B: gradients flow; A: zero at init as B = 0).
    assert all("lora_" in p for p in paths.flatten(grads4)), list(paths.flatten(grads4))
    # The planted imbalance matters: the mean of micro-batch means is another number.
    means = [_grads(built, {k: v[i::4] for k, v in batch.items()}, 1)[0] for i in (0, 1, 3)]
    assert abs(np.mean(means + [0.0]) - loss) > 0.5


def test_accumulated_train_steps_equal_whole_batch_steps_and_keep_frozen_bit_identical():
    batch = _batch()
    states = {}
    for accum in (1, 4):
        built = _built(_config(True, accum), jax.devices()[:1])
        frozen_before = jax.tree.map(np.array, built.frozen)
        train_step = built.jit_train_step()
        state = built.state
        with jax.set_mesh(built.mesh), nn.logical_axis_rules(built.rules):
            for _ in range(3):
                state, metrics = train_step(state, built.frozen, batch)
        jax.tree.map(np.testing.assert_array_equal, frozen_before,
                     jax.tree.map(np.asarray, built.frozen))
        states[accum] = (jax.tree.map(np.asarray, state.trainable), float(metrics["loss"]))
    _assert_trees_close(states[4][0], states[1][0], 1e-6)
    assert abs(states[4][1] - states[1][1]) < 1e-6
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), states[4][0],
                         jax.tree.map(np.asarray, _built(_config(True), jax.devices()[:1])
                                      .state.trainable))
    assert max(jax.tree.leaves(moved)) > 1e-3  # three steps of lr 1e-2 did move LoRA


@pytest.mark.parametrize("preset", ["fsdp", "fsdp_tensor"])
def test_accumulation_on_8_sharded_devices_equals_one_device_whole_batch(preset):
    mesh = (("data", 2), ("fsdp", 4), ("tensor", 1)) if preset == "fsdp" else \
        (("data", 2), ("fsdp", 2), ("tensor", 2))
    sharded = _built(_config(True, 2, mesh, preset), jax.devices())
    assert len(sharded.mesh.devices.flat) == 8
    single = _built(_config(True), jax.devices()[:1])
    loss, _, grads = _grads(single, _batch(), 1)
    loss2, _, grads2 = _grads(sharded, _batch(), 2)
    assert abs(loss2 - loss) < 1e-6
    _assert_trees_close(grads2, grads, 1e-6)


def test_batch_that_does_not_split_into_micro_batches_is_refused():
    config = _config(accum=3)
    with pytest.raises(ValueError, match=r"batch_size=16 is not divisible by "
                                         r"train.grad_accum_steps=3"):
        config_lib.validate(config, 1)
    config.train.grad_accum_steps = 0
    with pytest.raises(ValueError, match=r"grad_accum_steps=0 must be > 0"):
        config_lib.validate(config, 1)
