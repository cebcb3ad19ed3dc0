"""Bytes of a QLoRA base: the frozen block linear kernels stored as fp32 / int8 / NF4 (with and
without double quantization), embeddings and the rest reported apart, and the argument bytes
XLA's memory analysis gives for the compiled train step (all-MiniLM-L6-v2, BANKING77 LoRA).

  JAX_PLATFORMS=cpu python -m bench.qlora_memory   # ~1 minute on a 2-core CPU

Shapes only (`build(abstract=True)`): no weight is read.
"""
from __future__ import annotations

import json
import re

import flax.linen as nn
import jax

from experiments import banking77_lora
from lmx import paths
from lmx.scale import aot, sharding
from lmx.train import build

VARIANTS = {"fp32": ("none", False), "int8": ("int8", False), "nf4": ("nf4", False),
            "nf4+double": ("nf4", True)}
LINEAR = re.compile(r"params/layer_\d+/(attention/(query|key|value|out)|mlp/(up|down))/kernel")


def measure(kind: str, double: bool) -> dict:
    config = banking77_lora.get_config("")
    config.model.quantize_base, config.model.quantize_double = kind, double
    mesh, rules = sharding.make_mesh(config.mesh), sharding.rules_for(config.sharding)
    built = build.build(config, 77, mesh=mesh, rules=rules, abstract=True)
    groups = {"linear_kernels": 0, "embeddings": 0, "other_frozen": 0}
    for path, leaf in paths.flatten(built.frozen).items():
        nbytes = leaf.size * leaf.dtype.itemsize
        group = ("linear_kernels" if LINEAR.match(path) else
                 "embeddings" if "embed" in path else "other_frozen")
        groups[group] += nbytes
    batch = aot._abstract_batch(config, mesh, rules, config.data.max_length)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = built.jit_train_step(out_shardings=False).trace(
            built.state, built.frozen, batch).lower().compile()
    memory = compiled.memory_analysis()
    return {**groups, "xla_argument_bytes": memory.argument_size_in_bytes,
            "xla_temp_bytes": memory.temp_size_in_bytes}


def main() -> None:
    rows = {name: measure(*variant) for name, variant in VARIANTS.items()}
    base = rows["fp32"]
    for name, row in rows.items():
        row["linear_kernels_vs_fp32"] = round(row["linear_kernels"] / base["linear_kernels"], 4)
        row["xla_arguments_vs_fp32"] = round(
            row["xla_argument_bytes"] / base["xla_argument_bytes"], 4)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
