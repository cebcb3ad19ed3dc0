"""Ahead-of-time checks of a config for a topology this machine does not have.

`lower(config, num_devices)` builds the model, optimizer and train step from shapes only
(`jax.eval_shape`), shards them on a device-free `AbstractMesh` of `num_devices`, and lowers
the jitted train step: mesh shape, batch divisibility, logical axis rules and the program
itself are validated for a pod slice on a laptop. Compiling needs the real devices (XLA
compiles for a backend), so `compile()` only works where the mesh's devices exist.

  python -m lmx.scale.aot --config experiments/NAME.py --num_devices 256 [--config.k=v]
"""
from __future__ import annotations

import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lmx import config as config_lib, peft as peft_lib
from lmx.scale import sharding
from lmx.train import build as models, optim
from lmx.train.step import TRAINABLE_COLLECTIONS, TrainState, split, train_step


def abstract_model(config: ml_collections.ConfigDict, num_labels: int):
    """(module, boxed abstract variables) from shapes only: no weights are materialized."""
    cfg, _, _ = models._arch_config(config, num_labels)  # noqa: SLF001  (as models.create)
    inputs = models.dummy_inputs(config)
    base = models._module(config, cfg, num_labels, peft_lib.NO_PEFT)  # noqa: SLF001
    base_shapes = jax.eval_shape(lambda: nn.unbox(base.init(jax.random.key(0), *inputs)))
    spec = peft_lib.spec_from_config(config.peft, {"params": base_shapes["params"]})
    module = models._module(config, cfg, num_labels, spec)  # noqa: SLF001
    boxed = jax.eval_shape(lambda k: module.init({"params": k, "dropout": k}, *inputs),
                           jax.random.key(0))
    return module, boxed


def _with_sharding(tree, shardings):
    """ShapeDtypeStructs carrying their shardings; a dimension the mesh does not divide is an
    error naming the parameter."""
    def attach(path, x, s):
        try:
            s.shard_shape(x.shape)
        except ValueError as e:
            raise ValueError(f"{jax.tree_util.keystr(path)} {x.shape} cannot be split as "
                             f"{s.spec} over mesh {dict(s.mesh.shape)}") from e
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    return jax.tree_util.tree_map_with_path(attach, tree, shardings)


def lower(config: ml_collections.ConfigDict, num_devices: int, num_labels: int = 2,
          seq_len: int = 0, platform: str = "tpu"):
    """The train step lowered for `num_devices` of `platform` (an `AbstractMesh`, so no such
    devices need to exist here); returns (lowered, report)."""
    config_lib.validate(config, num_devices)
    mesh = sharding.abstract_mesh(config.mesh, num_devices)
    rules = sharding.rules_for(config.sharding)
    module, boxed = abstract_model(config, num_labels)
    specs = nn.get_partition_spec(boxed)
    variables = _with_sharding(nn.unbox(boxed), sharding.logical_to_shardings(specs, mesh, rules))
    learnable = {k: v for k, v in variables.items() if k in TRAINABLE_COLLECTIONS}
    labels = optim.trainable_labels(
        learnable, peft_lib.trainable_patterns(config.peft, learnable),
        what="config.peft.trainable")
    tx = optim.make_optimizer(config.train, labels, max(config.train.num_steps, 1000))
    boxed_learnable = {k: v for k, v in boxed.items() if k in TRAINABLE_COLLECTIONS}
    opt_specs = nn.get_partition_spec(jax.eval_shape(tx.init, boxed_learnable))
    opt_state = _with_sharding(jax.eval_shape(tx.init, learnable),
                               sharding.logical_to_shardings(opt_specs, mesh, rules))
    trainable, frozen = split(learnable, labels)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        trainable=trainable, opt_state=opt_state,
        model_state={k: v for k, v in variables.items() if k not in TRAINABLE_COLLECTIONS},
        rng=jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated))
    batch = _abstract_batch(config, mesh, rules, seq_len or config.data.max_length)
    step = jax.jit(functools.partial(train_step, model=module, tx=tx), donate_argnums=(0,))
    with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(rules):
        lowered = step.trace(state, frozen, batch).lower(lowering_platforms=(platform,))
    return lowered, _report(config, num_devices, mesh, state, frozen)


def _abstract_batch(config, mesh, rules, seq_len: int) -> dict:
    size = config.train.batch_size

    def leaf(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(
            mesh, rules, len(shape)))

    if config.model.family == "resnet":
        image = config.model.image_size
        return {"images": leaf((size, image, image, 3), jnp.float32),
                "labels": leaf((size,), jnp.int32), "weights": leaf((size,), jnp.float32)}
    return {"ids": leaf((size, seq_len), jnp.int32), "mask": leaf((size, seq_len), jnp.bool_),
            "token_types": leaf((size, seq_len), jnp.int32),
            "labels": leaf((size,), jnp.int32), "weights": leaf((size,), jnp.float32)}


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape)
        total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
    return total


def _report(config, num_devices, mesh, state, frozen) -> dict:
    return {"devices": num_devices, "mesh": dict(mesh.shape), "sharding": config.sharding,
            "global_batch": config.train.batch_size,
            "per_device_frozen_bytes": per_device_bytes(frozen),
            "per_device_state_bytes": per_device_bytes(
                (state.trainable, state.opt_state, state.model_state))}


def main(argv):
    from absl import flags  # noqa: PLC0415
    lowered, report = lower(flags.FLAGS.config, flags.FLAGS.num_devices)
    report["stablehlo_chars"] = len(lowered.as_text())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_integer("num_devices", 256, "Devices of the target topology.")
    app.run(main)
