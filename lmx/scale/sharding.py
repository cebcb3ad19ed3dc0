"""Meshes, logical axis names and the rules that map one onto the other.

Every parameter and main activation in lmx carries logical axis names from the
closed set below; a preset of `logical_axis_rules` (config data) maps them onto
the mesh axes `data`, `fsdp` and `tensor`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# The closed set of logical axis names.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
HEADS = "heads"
KV = "kv"  # per-head feature dimension
MLP = "mlp"
VOCAB = "vocab"
LAYERS = "layers"  # the stacked-layer axis of a scanned model: always replicated
RANK = "rank"  # LoRA rank, adapter bottleneck, prompt tokens: always replicated
CONV_IN = "conv_in"
CONV_OUT = "conv_out"
NONE = None

MESH_AXES = ("data", "fsdp", "tensor")

RULE_PRESETS: dict[str, tuple[tuple[str, Any], ...]] = {
    # Pure data parallelism: the batch is split over every device, weights replicated.
    "data_parallel": ((BATCH, ("data", "fsdp", "tensor")),),
    # ZeRO-3 style: weights split along `embed` over fsdp, batch over data x fsdp.
    "fsdp": (
        (BATCH, ("data", "fsdp")),
        (EMBED, "fsdp"),
        (CONV_OUT, "fsdp"),
    ),
    # FSDP plus Megatron-style tensor parallelism of heads / mlp / vocab.
    "fsdp_tensor": (
        (BATCH, ("data", "fsdp")),
        (EMBED, "fsdp"),
        (HEADS, "tensor"),
        (MLP, "tensor"),
        (VOCAB, "tensor"),
        (CONV_OUT, "fsdp"),
    ),
}


def mesh_sizes(mesh_spec: Sequence[tuple[str, int]], num_devices: int) -> dict[str, int]:
    """`{name: size}` from `(name, size)` pairs; one size may be -1 for "the rest"."""
    try:
        names = [str(name) for name, _ in mesh_spec]
        sizes = [int(size) for _, size in mesh_spec]
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.mesh={mesh_spec!r} is not (name, size) pairs") from e
    if sorted(names) != sorted(MESH_AXES):
        raise ValueError(f"config.mesh must name exactly {MESH_AXES}, got {names}")
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh={tuple(mesh_spec)}: sizes must be >= 1, one may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
        raise ValueError(
            f"config.mesh={tuple(mesh_spec)} does not divide {num_devices} devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"config.mesh={tuple(mesh_spec)} uses {math.prod(sizes)} devices, "
            f"but {num_devices} are present")
    return dict(zip(names, sizes))


def make_mesh(mesh_spec: Sequence[tuple[str, int]], devices=None) -> Mesh:
    """Builds a mesh (Auto axes) from `(name, size)` pairs over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_sizes(mesh_spec, len(devices))
    device_array = np.asarray(devices).reshape(list(sizes.values()))
    return Mesh(device_array, tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes))


def abstract_mesh(mesh_spec: Sequence[tuple[str, int]], num_devices: int
                  ) -> jax.sharding.AbstractMesh:
    """A device-free mesh of `num_devices` for ahead-of-time lowering of a bigger topology."""
    sizes = mesh_sizes(mesh_spec, num_devices)
    return jax.sharding.AbstractMesh(tuple(sizes.values()), tuple(sizes),
                                     axis_types=(AxisType.Auto,) * len(sizes))


def rules_for(preset: str) -> tuple[tuple[str, Any], ...]:
    if preset not in RULE_PRESETS:
        raise ValueError(
            f"config.sharding={preset!r} is not one of {sorted(RULE_PRESETS)}")
    return RULE_PRESETS[preset]


def logical_to_shardings(logical_specs: Any, mesh: Mesh, rules) -> Any:
    """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
    """Sharding of a host batch array: leading axis over the batch mesh axes."""
    spec = nn.logical_to_mesh_axes((BATCH,) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_ways(sizes: dict[str, int], rules) -> int:
    """How many ways the batch is split: the global batch must be divisible by it."""
    spec = nn.logical_to_mesh_axes((BATCH,), rules)[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return math.prod(sizes[a] for a in axes)


def batch_axis_size(mesh: Mesh, rules) -> int:
    return batch_ways(dict(mesh.shape), rules)
