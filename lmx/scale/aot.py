"""Ahead-of-time checks of a config for a topology this machine does not have.

`lower(config, num_devices)` builds the model, optimizer and train step from shapes only
(`jax.eval_shape`), shards them on a device-free `AbstractMesh` of `num_devices`, and lowers
the jitted train step: mesh shape, batch divisibility, logical axis rules and the program
itself are validated for a pod slice on a laptop.

`compile_for_topology(config, "v5e:4x4", seq_len)` goes further where libtpu is installed
(`pip install 'jax[tpu]'`, no TPU needed): the devices come from the TPU topology description,
the step is compiled by the TPU compiler, and its per-device argument / temporary / output
bytes and FLOPs are reported with the optimizer-state bytes. `plan_config` is the LoRA
fine-tune those plans compile (bf16 base, fp32 LoRA, scanned layers).

  python -m lmx.scale.aot --config experiments/NAME.py --num_devices 256 [--config.k=v]
  python -m lmx.scale.aot --topology v5e:4x4 --size llama3-8b --sharding fsdp \
      --remat full --batch_seq 16x2048,32x4096 --grad_accum 1,4
"""
from __future__ import annotations

import dataclasses
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lmx import config as config_lib
from lmx.models import families, transformer
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


# HBM per chip (GiB) of the TPU generations a plan names, from Google's TPU system pages;
# a topology whose devices are TensorCores (v4: two per chip) gives each its share.
HBM_GIB_PER_CHIP = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
TOKEN_LEVEL_TASKS = ("causal_lm", "mlm", "token_classification")


def topology_devices(topology: str) -> list:
    """The devices of a TPU topology ("v5e:4x4", "v4:2x2x2", ...) from libtpu's description:
    they can be compiled for, not run on."""
    from jax.experimental import topologies  # noqa: PLC0415
    try:
        return list(topologies.get_topology_desc(platform="tpu",
                                                 topology_name=topology).devices)
    except Exception as e:  # libtpu missing, or a name it does not know
        raise ValueError(f"--topology={topology!r}: no TPU topology description ({e}); "
                         "install libtpu (pip install 'jax[tpu]') and name it like "
                         "v5e:4x4, v4:2x2x2, v5p:2x2x2") from e


def plan_config(size: str, sharding_preset: str, remat: str, batch: int, seq_len: int,
                grad_accum: int, tensor: int = 4, rank: int = 16,
                attention: str = "einsum") -> ml_collections.ConfigDict:
    """A LoRA fine-tune of a causal LM named by the size table, as the TPU plans compile it:
    LoRA (rank `rank`) on every attention and MLP kernel, only LoRA trains, bf16 matmuls,
    scanned layers. The data keys are placeholders (a plan reads no data)."""
    c = config_lib.base_config()
    c.model.size, c.model.task, c.model.dtype = size, "causal_lm", "bfloat16"
    c.model.scan_layers, c.model.remat, c.model.attention = True, remat, attention
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    c.peft.lora.rank, c.peft.lora.alpha = rank, 2.0 * rank
    c.peft.lora.targets = (
        r"params/layer_\d+/(attention/(query|key|value|out)|mlp/(gate|up|down))/kernel",)
    c.peft.trainable = (r"peft/.*",)
    c.data.kind, c.data.train_file, c.data.tokenizer = "text", "tfds:plan", "char"
    c.data.max_length, c.data.pad_multiple = seq_len, 1
    c.train.batch_size, c.train.eval_batch_size = batch, batch
    c.train.grad_accum_steps, c.train.num_steps = grad_accum, 1000
    c.sharding = sharding_preset
    c.mesh = (("data", 1), ("fsdp", -1),
              ("tensor", tensor if sharding_preset == "fsdp_tensor" else 1))
    return c


def _compile(config: ml_collections.ConfigDict, devices: list, seq_len: int, base_dtype: str):
    """(compiled train step, built, frozen in `base_dtype`) on a mesh over `devices`."""
    config_lib.validate(config, len(devices))
    mesh = sharding.make_mesh(config.mesh, devices)
    rules = sharding.rules_for(config.sharding)
    built = build.build(config, 0, mesh=mesh, rules=rules, abstract=True,
                        total_steps=max(config.train.num_steps, 1000))
    frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(base_dtype),
                                                         sharding=x.sharding), built.frozen)
    batch = _abstract_batch(config, mesh, rules, seq_len)
    step = built.jit_train_step(out_shardings=False)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = step.trace(built.state, frozen, batch).lower().compile()
    return compiled, built, frozen


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", -1.0))


def flops_per_step(config: ml_collections.ConfigDict, devices: list, seq_len: int,
                   base_dtype: str = "bfloat16") -> float:
    """Per-device FLOPs of one whole step as the TPU compiler counts them.

    XLA's cost analysis counts a loop body once (one scanned layer, one micro-batch), so the
    same step is compiled unrolled with 1 and 2 layers on one micro-batch: F1 + (L - 1) x
    (F2 - F1) per micro-batch, times grad_accum_steps (the small LoRA optimizer update is then
    counted once per micro-batch)."""
    size, accum = config.model.size, config.train.grad_accum_steps
    base = transformer.SIZES[size]
    per_layers = []
    for n in (1, 2):
        name = f"{size}@{n}layers"  # a derived size, registered for this process only
        transformer.SIZES.setdefault(name, dataclasses.replace(base, num_layers=n))
        c = config.copy_and_resolve_references()
        c.model.size, c.model.scan_layers = name, False
        c.train.batch_size, c.train.grad_accum_steps = config.train.batch_size // accum, 1
        per_layers.append(_flops(_compile(c, devices, seq_len, base_dtype)[0]))
    f1, f2 = per_layers
    return accum * (f1 + (base.num_layers - 1) * (f2 - f1))


def compile_for_topology(config: ml_collections.ConfigDict, topology: str, seq_len: int = 0,
                         base_dtype: str = "bfloat16", count_flops: bool = True) -> dict:
    """Compiles the train step for a TPU topology; the frozen base is held in `base_dtype`
    (trainable leaves and optimizer state keep theirs). Returns the TPU compiler's numbers:
    per-device bytes of the compiled step and (`count_flops`) `flops_per_step`."""
    devices = topology_devices(topology)
    seq_len = seq_len or config.data.max_length
    compiled, built, frozen = _compile(config, devices, seq_len, base_dtype)
    memory = compiled.memory_analysis()
    report = _report(config, len(devices), built.mesh, built.state, frozen)
    peak = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
            + memory.output_size_in_bytes - memory.alias_size_in_bytes)
    chips = len({tuple(d.coords) for d in devices})
    hbm = HBM_GIB_PER_CHIP.get(topology.split(":")[0], 0) * 2**30 * chips // len(devices)
    report.update(
        topology=topology, device_kind=devices[0].device_kind, model=config.model.size,
        remat=config.model.remat, attention=config.model.attention, seq_len=seq_len,
        grad_accum_steps=config.train.grad_accum_steps,
        per_device_opt_state_bytes=per_device_bytes(built.state.opt_state),
        argument_bytes=memory.argument_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        output_bytes=memory.output_size_in_bytes, alias_bytes=memory.alias_size_in_bytes,
        peak_bytes=peak, hbm_bytes=hbm, fits=bool(hbm) and peak <= hbm,
        compiler_flops_loop_bodies_once=_flops(compiled),
        flops_per_device_step=(flops_per_step(config, devices, seq_len, base_dtype)
                               if count_flops else None))
    return report


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
            "labels": leaf((size, seq_len) if config.model.task in TOKEN_LEVEL_TASKS
                           else (size,), jnp.int32),
            "weights": leaf((size,), jnp.float32)}


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


def _plans(f) -> list[tuple[str, ml_collections.ConfigDict, int]]:
    """(topology, config, seq_len) for every point of the flags' grid."""
    out = []
    for topology in f.topology.split(","):
        for size in f.size.split(","):
            for preset in f.sharding.split(","):
                for remat in f.remat.split(","):
                    for batch_seq in f.batch_seq.split(","):
                        batch, seq_len = (int(x) for x in batch_seq.split("x"))
                        for accum in (int(a) for a in f.grad_accum.split(",")):
                            out.append((topology, plan_config(
                                size, preset, remat, batch, seq_len, accum, f.tensor, f.rank,
                                f.attention), seq_len))
    return out


def main(argv):
    from absl import flags  # noqa: PLC0415
    f = flags.FLAGS
    if not f.topology:
        lowered, report = lower(f.config, f.num_devices)
        report["stablehlo_chars"] = len(lowered.as_text())
        print(json.dumps(report, indent=2))
        return
    for topology, config, seq_len in _plans(f):
        try:
            report = compile_for_topology(config, topology, seq_len)
        except (ValueError, jax.errors.JaxRuntimeError) as e:
            # a grid point the mesh cannot split, or the TPU compiler's "RESOURCE_EXHAUSTED:
            # Ran out of memory on HBM" (it does not fit): say so, go on
            report = {"topology": topology, "model": config.model.size,
                      "sharding": config.sharding, "remat": config.model.remat,
                      "global_batch": config.train.batch_size, "seq_len": seq_len,
                      "grad_accum_steps": config.train.grad_accum_steps,
                      "attention": config.model.attention, "fits": False,
                      "error": str(e).splitlines()[-1] if str(e) else repr(e)}
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_integer("num_devices", 256, "Devices of the target topology.")
    flags.DEFINE_string("topology", "", "Comma-separated TPU topologies to compile for "
                        "(needs libtpu); empty: lower --config for --num_devices.")
    flags.DEFINE_string("size", "llama3-8b", "Comma-separated sizes of the transformer table.")
    flags.DEFINE_string("sharding", "fsdp", "Comma-separated presets (fsdp, fsdp_tensor).")
    flags.DEFINE_string("remat", "full", "Comma-separated remat policies (none, full, dots).")
    flags.DEFINE_string("batch_seq", "16x2048", "Comma-separated global BATCHxSEQ_LEN.")
    flags.DEFINE_string("grad_accum", "1", "Comma-separated gradient accumulation steps.")
    flags.DEFINE_integer("tensor", 4, "Tensor-parallel ways of the fsdp_tensor preset.")
    flags.DEFINE_integer("rank", 16, "LoRA rank.")
    flags.DEFINE_string("attention", "einsum", "config.model.attention of the plans.")
    app.run(main)
