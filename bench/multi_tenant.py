"""Multi-tenant experiment (issue 17): BANKING77, CLINC150 and PhraseBank LoRA adapters trained
together in mixed batches on one frozen all-MiniLM-L6-v2, vs each trained alone.

  python -m bench.multi_tenant --seed 0 --runs alone   # the 3 tenants through loop.run
  python -m bench.multi_tenant --seed 0 --runs mixed   # the 3 together, one mixed run
  python -m bench.multi_tenant --report                # the table over every seed recorded
  python -m bench.multi_tenant --runs tokens           # padded token slots, alone vs mixed

Configs: experiments/multi_tenant.py (one per tenant, `:banking77` ...). Alone = the launcher's
run of that config (`loop.run`). Mixed = one `loop.Trainer` per tenant for its data, its
initial adapter and its scoring; their adapters (LoRA + head) stacked (`lmx.adapters.mixed`),
and for S steps one `mixed_train_step` on the tenants' own step-i batches side by side
(`batching.mixed_batch`: B rows of each tenant, so S steps of B rows per tenant, as alone).
Each adapter then goes back into its tenant's Trainer and is scored by the task's own
`evaluate` on its validation split. Same init, data order and optimizer as alone: only the
dropout masks, the padding and the float summation order differ.
Results merge into bench/multi_tenant.json (one entry per seed and run).
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmx import tasks
from lmx.adapters import mixed
from lmx.data import batching
from lmx.train import loop, optim
from lmx.train.mixed import mixed_train_step
from lmx.train.step import TrainState, merge

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "bench", "multi_tenant.json")


def tenant_configs(seed: int, arg: str = "") -> dict:
    """{tenant: its config} from experiments/multi_tenant.py, all at `seed`."""
    spec = importlib.util.spec_from_file_location(
        "multi_tenant", os.path.join(REPO, "experiments", "multi_tenant.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    configs = {}
    for tenant in module.TENANTS:
        configs[tenant] = module.get_config(",".join(filter(None, [tenant, arg])))
        configs[tenant].seed = seed
    return configs


def _headline(trainer: loop.Trainer, scores: dict) -> dict:
    name = trainer.task.headline()
    return {"metric": name, "value": scores[name], "validation": scores,
            "validation_examples": len(trainer.datasets["validation"])}


def run_alone(config, workdir: str) -> dict:
    """One tenant through the launcher's loop; its headline validation score and times."""
    start = time.perf_counter()
    results = loop.run(config, workdir)
    return {"metric": results["headline"]["name"], "value": results["headline"]["value"],
            "validation": results["validation"], "steps": results["step"],
            "train_seconds": results["train_seconds"],
            "wall_seconds": time.perf_counter() - start}


def _check_shared(configs: dict) -> None:
    """One optimizer and one base serve the mixed run: their config must agree."""
    first = next(iter(configs.values()))
    for tenant, config in configs.items():
        for section in ("train", "model"):
            if config[section].to_dict() != first[section].to_dict():
                raise ValueError(f"mixed run: tenant {tenant!r} config.{section} differs from "
                                 f"the first tenant's; one optimizer and base serve them all")
        if config.seed != first.seed:
            raise ValueError(f"mixed run: tenant {tenant!r} seed differs from the first's")


def run_mixed(configs: dict, workdir: str) -> dict:
    """The tenants trained together: {tenant: headline}, plus times and rows per adapter."""
    _check_shared(configs)
    start = time.perf_counter()
    trainers = {t: loop.Trainer(c, os.path.join(workdir, t)) for t, c in configs.items()}
    first = next(iter(trainers.values()))
    adapters = {t: mixed.from_variables(tr.model.module.peft, tr.state.trainable)
                for t, tr in trainers.items()}
    mixed_spec, stacked = mixed.stack(adapters)
    module = first.model.module.clone(peft=mixed_spec.spec,
                                      num_labels=max(mixed_spec.num_labels))
    frozen = first.frozen  # the same pretrained base in every tenant's Trainer
    variables = merge(frozen, {"peft": stacked})
    steps = first.total_steps
    tx = optim.make_optimizer(first.config.train,
                              optim.trainable_labels(variables, [r"peft/.*"]), steps)
    state = TrainState(step=jnp.zeros((), jnp.int32), trainable={"peft": stacked},
                       opt_state=tx.init(variables), model_state={}, rng=first.state.rng)
    step = jax.jit(functools.partial(mixed_train_step, model=module, tx=tx, mixed=mixed_spec),
                   donate_argnums=0)
    streams = [tr.train_stream(0) for tr in trainers.values()]
    rows_N = np.zeros(mixed_spec.num_adapters)
    setup_seconds = time.perf_counter() - start
    tick = time.perf_counter()
    for i in range(steps):
        batch = batching.mixed_batch([next(s) for s in streams], pad_id=first.task.pad_id)
        state, metrics = step(state, frozen, batch)
        if i % 50 == 0 or i == steps - 1:  # a diverged run stops here, not after S steps
            loss_N = np.asarray(metrics["loss_sum_N"]) / np.asarray(metrics["count_N"])
            if not np.isfinite(loss_N).all():
                raise FloatingPointError(f"mixed run: step {i + 1} loss per adapter {loss_N}")
        rows_N += np.asarray(metrics["count_N"])
    jax.block_until_ready(state)
    train_seconds = time.perf_counter() - tick
    trained = mixed.unstack(mixed_spec, state.trainable["peft"], adapters)
    out = {}
    for n, (tenant, trainer) in enumerate(trainers.items()):
        _, own = mixed.to_variables(trained[tenant])
        trainer.state = trainer.state.replace(trainable=own)
        scores = trainer.evaluate(trainer.datasets["validation"])
        out[tenant] = {**_headline(trainer, scores), "rows_trained": int(rows_N[n])}
    return {"tenants": out, "steps": steps, "setup_seconds": setup_seconds,
            "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - start}


def padded_tokens(configs: dict, workdir: str) -> dict:
    """Token slots (rows x padded length) the S training batches hold: each tenant's alone,
    and the mixed batches (every tenant's rows widened to the step's longest): why a mixed
    step costs more than the three alone steps together. No model is built."""
    tasks_ = {}
    for tenant, config in configs.items():
        task = tasks.get(config)
        loaded = task.load(config, os.path.join(workdir, tenant))
        task.bind(loaded)
        tasks_[tenant] = (task, loaded.train)
    steps = next(iter(configs.values())).train.num_steps
    streams = {t: task.train_batches(train, 0) for t, (task, train) in tasks_.items()}
    alone = dict.fromkeys(configs, 0)
    real, mixed_slots = 0, 0
    for _ in range(steps):
        batches = {t: next(s) for t, s in streams.items()}
        for t, b in batches.items():
            alone[t] += b["ids"].size
            real += int(b["mask"].sum())
        mixed_slots += batching.mixed_batch(list(batches.values()), pad_id=0)["ids"].size
    return {"alone": alone, "alone_total": sum(alone.values()), "mixed": mixed_slots,
            "real": real, "steps": steps}


def _load(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def report(results: dict) -> str:
    """The markdown table: per tenant alone vs mixed, mean +- std over the seeds recorded."""
    seeds = sorted(k.split("/")[0] for k in results if k.endswith("/mixed"))
    seeds = [s for s in seeds if all(f"{s}/alone/{t}" in results
                                     for t in results[f"{s}/mixed"]["tenants"])]
    if not seeds:
        return "no seed has both its alone and mixed runs recorded"
    tenants = list(results[f"{seeds[0]}/mixed"]["tenants"])
    lines = [("| tenant (metric) | alone, mean +- std | mixed, mean +- std | mixed - alone "
              "(points) | within 1 point or 2 std? | alone wall (s) per run | per seed, "
              "alone / mixed |"), "|---|---|---|---|---|---|---|"]
    for t in tenants:
        alone = np.array([results[f"{s}/alone/{t}"]["value"] for s in seeds]) * 100
        mix = np.array([results[f"{s}/mixed"]["tenants"][t]["value"] for s in seeds]) * 100
        diff = mix.mean() - alone.mean()
        alone_std, mix_std = ((alone.std(ddof=1), mix.std(ddof=1)) if len(seeds) > 1
                              else (0.0, 0.0))
        std = max(alone_std, mix_std)
        ok = abs(diff) <= 1.0 or abs(diff) <= 2 * std
        wall = np.mean([results[f"{s}/alone/{t}"]["wall_seconds"] for s in seeds])
        per_seed = ", ".join(f"{a:.2f} / {m:.2f}" for a, m in zip(alone, mix))
        metric = results[f"{seeds[0]}/mixed"]["tenants"][t]["metric"]
        lines.append(f"| {t} ({metric}) | {alone.mean():.2f} +- {alone_std:.2f} | "
                     f"{mix.mean():.2f} +- {mix_std:.2f} | {diff:+.2f} | "
                     f"{'yes' if ok else 'NO'} | {wall:.0f} | {per_seed} |")
    mixed_wall = np.mean([results[f"{s}/mixed"]["wall_seconds"] for s in seeds])
    mixed_train = np.mean([results[f"{s}/mixed"]["train_seconds"] for s in seeds])
    alone_train = np.mean([sum(results[f"{s}/alone/{t}"]["train_seconds"] for t in tenants)
                           for s in seeds])
    lines.append(f"\nSeeds {', '.join(seeds)}; std = sample std over seeds (the larger of the "
                 f"two sides). Mixed run: {mixed_wall:.0f} s wall per seed ({mixed_train:.0f} s "
                 f"training); the three alone runs: {alone_train:.0f} s training together.")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="alone,mixed")
    parser.add_argument("--arg", default="", help="extra experiment arg, e.g. runlocal")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    results = _load(args.out)
    if args.report:
        print(report(results))
        return
    configs = tenant_configs(args.seed, args.arg)
    workdir = tempfile.mkdtemp(prefix="multi_tenant_")
    try:
        for run in args.runs.split(","):
            if run == "alone":
                for tenant, config in configs.items():
                    row = run_alone(config, os.path.join(workdir, "alone", tenant))
                    results[f"{args.seed}/alone/{tenant}"] = row
                    print(tenant, "alone", json.dumps({k: row[k] for k in (
                        "value", "train_seconds", "wall_seconds")}), flush=True)
            elif run == "tokens":
                results["tokens"] = padded_tokens(configs, os.path.join(workdir, "tokens"))
                print("tokens", json.dumps(results["tokens"]), flush=True)
            elif run == "mixed":
                results[f"{args.seed}/mixed"] = run_mixed(configs, os.path.join(workdir, "mixed"))
                print("mixed", json.dumps(results[f"{args.seed}/mixed"]), flush=True)
            else:
                raise ValueError(f"--runs: unknown run {run!r} (alone, mixed, tokens)")
            results = {**_load(args.out), **results}  # keep what other seeds wrote meanwhile
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1, sort_keys=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(results))


if __name__ == "__main__":
    main()
