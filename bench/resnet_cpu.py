"""ResNet-50 on CPU, lmx vs torch, one lever at a time: `python bench/resnet_cpu.py [levers]`.

Each side runs in its own process (an XLA client in torch's process slows torch). Both time
the same thing on the same batch (bench.workloads' resnet50 row: B=8, 224 px, 1000 labels):
  --mode train     the whole training step (lmx: the builder's jitted `train_step` with AdamW;
                   torch: bench.torch_side.train_step)
  --mode forward   the forward pass alone (BatchNorm as --bn says; torch under no_grad)
  --mode grad      loss and parameter gradients, no optimizer
  --mode convs     lmx only: single ResNet-50 convolutions, forward / input grad / kernel grad
Levers (each changes one thing): --bn eval, --dtype bfloat16 (lmx), --xla_flags "...",
--threads N (both sides: XLA's intra-op pool via --xla_cpu_multi_thread_eigen / torch
set_num_threads), --sides lmx to skip torch. --hlo FILE writes lmx's optimised HLO and prints
what the convolutions became. Prints one table row (median of --repeats after --warmup).

Example: flock /work/heavy.lock nice -n 5 python bench/resnet_cpu.py --mode grad
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.measure import median_seconds  # noqa: E402


def hlo_summary(text: str) -> dict:
    """Where the convolutions and dots of an optimised HLO went: fusion kinds and op counts."""
    entry = text[text.index("\nENTRY "):]
    kinds = collections.Counter(re.findall(r'"kind":"(__\w+)"', entry))
    ops = collections.Counter(re.findall(r"= \S+ (convolution|dot|custom-call|transpose|copy)\(",
                                         entry))
    nested = collections.Counter(re.findall(r"= \S+ (convolution|dot)\(", text)) - ops
    return {"fusions": dict(kinds), "entry_ops": dict(ops), "ops_inside_fusions": dict(nested)}


CONV_SHAPES = (  # (H, C, O, kernel, stride) of ResNet-50 convolutions at B=8
    (56, 64, 64, 3, 1), (56, 256, 64, 1, 1), (56, 256, 512, 1, 2), (28, 128, 128, 3, 2),
    (224, 3, 64, 7, 2))


def conv_parts(args) -> None:
    """Single convolutions: forward, input gradient, kernel gradient, and the kernel gradient
    as k*k matmuls over shifted pixels; GFLOP/s of each (lmx's process only)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    def conv(x, w, s):
        k = w.shape[0]
        return jax.lax.conv_general_dilated(x, w, (s, s), [((k - 1) // 2, k // 2)] * 2,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def kernel_grad_as_matmuls(x, dy, k, s):
        xp = jnp.pad(x, [(0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2), (0, 0)])
        n = dy.shape[1]
        taps = [jnp.einsum("bhwc,bhwo->co", xp[:, i:i + s * (n - 1) + 1:s,
                                               j:j + s * (n - 1) + 1:s], dy)
                for i in range(k) for j in range(k)]
        return jnp.stack(taps).reshape(k, k, x.shape[-1], dy.shape[-1])

    rng = np.random.default_rng(0)
    for H, C, O, k, s in CONV_SHAPES:
        x = jnp.asarray(rng.standard_normal((8, H, H, C), np.float32))
        w = jnp.asarray(rng.standard_normal((k, k, C, O), np.float32))
        dy = jnp.asarray(rng.standard_normal((8, H // s, H // s, O), np.float32))
        flops = 2 * 8 * (H // s) ** 2 * C * O * k * k
        fns = {"fwd": (jax.jit(lambda x, w, s=s: conv(x, w, s)), (x, w)),
               "dx": (jax.jit(lambda x, w, dy, s=s: jax.vjp(lambda x: conv(x, w, s), x)[1](dy)[0]),
                      (x, w, dy)),
               "dw": (jax.jit(lambda x, w, dy, s=s: jax.vjp(lambda w: conv(x, w, s), w)[1](dy)[0]),
                      (x, w, dy)),
               "dw as matmuls": (jax.jit(lambda x, dy, k=k, s=s: kernel_grad_as_matmuls(
                   x, dy, k, s)), (x, dy))}
        row = []
        for name, (fn, fn_args) in fns.items():
            t = median_seconds(lambda fn=fn, a=fn_args: jax.block_until_ready(fn(*a)), warmup=2,
                               repeats=args.repeats)["median_s"]
            row.append(f"{name} {t * 1e3:.1f} ms {flops / t / 1e9:.0f} GFLOP/s")
        print(f"| {H}x{H} {C}->{O} k{k} s{s} | " + " | ".join(row) + " |", flush=True)


def lmx_worker(args) -> dict:
    import flax.linen as nn
    import jax
    import optax

    from bench import lmx_side, workloads
    from lmx.scale import sharding
    from lmx.train import build

    suite = workloads.get_suite("cpu")
    w = workloads.get_workload(suite, "resnet50")
    batch = workloads.make_batch(w)
    config = lmx_side._config(w, suite, "full", args.dtype, "")
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    rules = sharding.rules_for(config.sharding)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        built = build.build(config, w.num_labels, mesh=mesh, rules=rules, total_steps=1000)
        device_batch = jax.device_put(batch)
        module, variables, train = built.module, built.model.variables, args.bn == "train"

        def loss_fn(params, images, labels):
            logits, _ = module.apply({**variables, "params": params}, images, train=train,
                                     mutable=["batch_stats"] if train else [])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        if args.mode == "train":
            if not train:
                raise SystemExit("--mode train always trains BatchNorm; use --mode grad")
            fn, fn_args = built.jit_train_step(out_shardings=False), (built.state, built.frozen,
                                                                     device_batch)
        elif args.mode == "forward":
            fn = jax.jit(lambda p, x: module.apply({**variables, "params": p}, x, train=train,
                                                   mutable=["batch_stats"] if train else []))
            fn_args = (variables["params"], device_batch["images"])
        else:
            fn = jax.jit(jax.value_and_grad(loss_fn))
            fn_args = (variables["params"], device_batch["images"], device_batch["labels"])
        start = time.perf_counter()
        compiled = fn.lower(*fn_args).compile()
        compile_s = time.perf_counter() - start
        holder = [fn_args]

        def one():
            out = compiled(*holder[0])
            if args.mode == "train":  # the state is donated: feed the new one back
                holder[0] = (out[0], *holder[0][1:])
            jax.block_until_ready(out)

        timing = median_seconds(one, warmup=args.warmup, repeats=args.repeats)
    text = compiled.as_text()
    if args.hlo:
        with open(args.hlo, "w") as f:
            f.write(text)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {**timing, "compile_s": compile_s, "flops": float(cost.get("flops", 0.0)),
            "hlo": hlo_summary(text)}


def torch_worker(args) -> dict:
    import torch

    from bench import torch_side, workloads

    if args.threads:
        torch.set_num_threads(args.threads)
    suite = workloads.get_suite("cpu")
    w = workloads.get_workload(suite, "resnet50")
    model = torch_side.build(w, "full", "", w.num_labels)
    model.train(args.bn == "train")
    opt, sched = torch_side.optimizer(model, suite.learning_rate_full, suite.warmup_fraction, 1000)
    inputs = torch_side._inputs(w, workloads.make_batch(w))

    def one():
        if args.mode == "train":
            torch_side.train_step(model, opt, sched, inputs).item()
        elif args.mode == "forward":
            with torch.no_grad():
                model(pixel_values=inputs["pixel_values"]).logits.sum().item()
        else:
            model(**inputs).loss.backward()
            model.zero_grad(set_to_none=True)

    return {**median_seconds(one, warmup=args.warmup, repeats=args.repeats), "threads": torch.get_num_threads()}


def _spawn(side: str, args) -> dict:
    env = dict(os.environ)
    flags = env.pop("XLA_FLAGS", "")  # one real CPU device, plus only the flags asked for
    if side == "lmx":
        extra = args.xla_flags
        if args.threads == 1:
            extra += " --xla_cpu_multi_thread_eigen=false"
        env["XLA_FLAGS"] = " ".join(filter(None, [flags if args.keep_env_flags else "",
                                                   extra.strip()]))
        if not env["XLA_FLAGS"]:
            del env["XLA_FLAGS"]  # an empty-but-set XLA_FLAGS is read as a file name
    argv = [sys.executable, os.path.abspath(__file__), "--worker", side] + sys.argv[1:]
    out = subprocess.run(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("train", "forward", "grad", "convs"), default="train")
    p.add_argument("--bn", choices=("train", "eval"), default="train")
    p.add_argument("--dtype", default="float32", help="lmx's conv / matmul input dtype")
    p.add_argument("--xla_flags", default="", help="added to XLA_FLAGS of the lmx process")
    p.add_argument("--keep_env_flags", action="store_true",
                   help="keep this shell's XLA_FLAGS too (dropped by default)")
    p.add_argument("--threads", type=int, default=0, help="0: each library's default")
    p.add_argument("--sides", default="lmx,torch")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hlo", default="", help="write lmx's optimised HLO text here")
    p.add_argument("--label", default="", help="the lever's name in the printed row")
    p.add_argument("--worker", choices=("lmx", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode == "convs":
        return conv_parts(args)  # in this process, which has not imported torch
    if args.worker:
        result = (lmx_worker if args.worker == "lmx" else torch_worker)(args)
        print(json.dumps(result), flush=True)
        return
    results = {side: _spawn(side, args) for side in args.sides.split(",")}
    lmx, ref = results.get("lmx"), results.get("torch")
    if lmx and "hlo" in lmx:
        print(f"lmx HLO: {json.dumps(lmx['hlo'])}; compile {lmx['compile_s']:.1f} s; "
              f"{lmx['flops'] / 1e9:.1f} GFLOP", file=sys.stderr)
    ms = lambda r: f"{r['median_s'] * 1e3:.0f}" if r else "-"
    ratio = f"{lmx['median_s'] / ref['median_s']:.2f}x" if lmx and ref else "-"
    label = args.label or f"mode={args.mode} bn={args.bn} dtype={args.dtype} " \
                          f"threads={args.threads or 'default'} flags='{args.xla_flags}'"
    print(f"| {label} | {ms(lmx)} | {ms(ref)} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
