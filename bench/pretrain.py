"""GPT-style pre-training MFU: a causal-LM train step of an lmx Transformer at a size that fills
the device. `python -m bench.pretrain --size gpt2-small --batch 16 --seq 1024 --dtype bfloat16`

Next-token cross-entropy, AdamW, scan over layers; FLOPs from XLA's cost analysis, MFU against
the matmul ceiling measured in the same process (`--ceiling-size`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import measure
from lmx.models import transformer


def make_step(model: transformer.Transformer, tx: optax.GradientTransformation):
    def loss_fn(params, ids_BT):
        logits_BTV = model.apply({"params": params}, ids_BT, deterministic=True)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits_BTV[:, :-1].astype(jnp.float32), ids_BT[:, 1:]).mean()

    def step(params, opt_state, ids_BT):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids_BT)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def measure_pretrain(size: str, batch: int, seq: int, dtype: str, remat: str, repeats: int,
                     ceiling_size: int) -> dict:
    cfg = dataclasses.replace(transformer.size(size, dtype=dtype, remat=remat, scan_layers=True,
                                               dropout_rate=0.0, attention_dropout_rate=0.0),
                              max_len=max(seq, transformer.SIZES[size].max_len))
    model = transformer.Transformer(cfg, task="causal_lm")
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq)),
                      jnp.int32)
    params = jax.jit(lambda k: nn.unbox(model.init(k, ids[:1, :8]))["params"])(jax.random.key(0))
    tx = optax.adamw(1e-4, weight_decay=0.01)
    opt_state = tx.init(params)
    start = time.perf_counter()
    compiled = make_step(model, tx).lower(params, opt_state, ids).compile()
    compile_s = time.perf_counter() - start
    holder = [params, opt_state]

    def one():
        holder[0], holder[1], loss = compiled(holder[0], holder[1], ids)
        loss.block_until_ready()

    timing = measure.median_seconds(one, warmup=2, repeats=repeats)
    stats = measure.xla_stats(compiled)
    ceiling = measure.matmul_ceiling(ceiling_size, repeats=5)
    return {"size": size, "batch": batch, "seq": seq, "dtype": dtype, "remat": remat,
            "params": int(sum(x.size for x in jax.tree.leaves(holder[0]))),
            "compile_s": compile_s, **timing, **stats,
            "tokens_per_s": batch * seq / timing["median_s"],
            "ceiling_flops_per_s": ceiling[f"{dtype}_flops_per_s"],
            "mfu": stats["flops"] / timing["median_s"] / ceiling[f"{dtype}_flops_per_s"],
            "device": str(jax.devices()[0])}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="gpt2-small", help="a key of lmx.models.transformer.SIZES")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ceiling-size", type=int, default=8192)
    parser.add_argument("--json", default="", help="also write the result here")
    args = parser.parse_args(argv)
    r = measure_pretrain(args.size, args.batch, args.seq, args.dtype, args.remat, args.repeats,
                         args.ceiling_size)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    print("| pre-training | params | batch x seq | dtype | step (ms) | tokens/s | TFLOP/step | "
          "ceiling (TFLOP/s) | MFU (%) | compile (s) |\n|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {r['size']} on {r['device']} | {r['params'] / 1e6:.1f} M | {r['batch']} x "
          f"{r['seq']} | {r['dtype']} | {r['median_s'] * 1e3:.1f} ms | {r['tokens_per_s']:.0f} "
          f"tokens/s | {r['flops'] / 1e12:.3f} TFLOP | {r['ceiling_flops_per_s'] / 1e12:.2f} "
          f"TFLOP/s | {r['mfu'] * 100:.1f}% | {r['compile_s']:.1f} s |")
    return r


if __name__ == "__main__":
    main()
