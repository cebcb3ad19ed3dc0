"""Ahead-of-time checks of a config for a topology this machine does not have.

`lower(config, num_devices)` builds the model, optimizer and train step from shapes only
(`jax.eval_shape`), shards them on a device-free `AbstractMesh` of `num_devices`, and lowers
the jitted train step: mesh shape, batch divisibility, logical axis rules and the program
itself are validated for a pod slice on a laptop. Compiling needs the real devices (XLA
compiles for a backend), so `compile()` only works where the mesh's devices exist.

  python -m lmx.scale.aot --config experiments/NAME.py --num_devices 256 [--config.k=v]
"""
from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lmx import config as config_lib
from lmx.models import families
from lmx.scale import sharding
from lmx.train import build


def lower(config: ml_collections.ConfigDict, num_devices: int, num_labels: int = 2,
          seq_len: int = 0, platform: str = "tpu"):
    """The train step lowered for `num_devices` of `platform` (an `AbstractMesh`, so no such
    devices need to exist here); returns (lowered, report)."""
    config_lib.validate(config, num_devices)
    mesh = sharding.abstract_mesh(config.mesh, num_devices)
    rules = sharding.rules_for(config.sharding)
    built = build.build(config, num_labels, mesh=mesh, rules=rules, abstract=True,
                        total_steps=max(config.train.num_steps, 1000))
    batch = _abstract_batch(config, mesh, rules, seq_len or config.data.max_length)
    step = built.jit_train_step(out_shardings=False)
    with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(rules):
        lowered = step.trace(built.state, built.frozen, batch).lower(
            lowering_platforms=(platform,))
    return lowered, _report(config, num_devices, mesh, built.state, built.frozen)


def _abstract_batch(config, mesh, rules, seq_len: int) -> dict:
    size = config.train.batch_size

    def leaf(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(
            mesh, rules, len(shape)))

    if families.get(config.model.family).inputs == "images":
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
