"""lmx vs transformers + peft, alternately in one invocation: `python -m bench.run --suite cpu`.

Writes bench/results.json and bench/RESULTS.md (or --out DIR). `--suite tiny` is the CI-sized
smoke run (a random bert-tiny BERT folder with all-MiniLM-L6-v2's tokenizer, a few steps).
Each side lives in its own worker process (bench/worker.py); this process only sends
requests, one side at a time, alternating which side goes first.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

from bench import measure, report, workloads

REPO = workloads.REPO


class Worker:
    """A `python -m bench.worker SIDE` process answering one JSON request per line."""

    def __init__(self, side: str):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one real CPU device
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH", "")]))
        self.side = side
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.worker", side], cwd=REPO,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def __call__(self, fn: str, **kwargs):
        self.proc.stdin.write(json.dumps({"fn": fn, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench worker {self.side!r} died during {fn}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"bench worker {self.side!r}, {fn}:\n{reply['error']}")
        return reply["ok"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _raw_pair(lmx, ref, suite_name, w, method, dtype, model_dir, ceiling, lmx_first: bool):
    kwargs = dict(suite=suite_name, workload=w.name, method=method, model_dir=model_dir)
    sides = {}
    for side in ("lmx", "torch") if lmx_first else ("torch", "lmx"):  # drift favours neither
        sides[side] = lmx("raw_step", dtype=dtype, **kwargs) if side == "lmx" else ref(
            "raw_step", **kwargs)
    flops = sides["lmx"]["flops"]  # the same math on both sides
    for r in sides.values():
        r["examples_per_s"] = w.batch_size / r["median_s"]
        r["mfu"] = flops / r["median_s"] / ceiling[f"{r['dtype']}_flops_per_s"]
    row = {"workload": w.name, "method": method, "lmx": sides["lmx"], "torch": sides["torch"],
           "time_ratio": sides["lmx"]["median_s"] / sides["torch"]["median_s"]}
    print(f"{w.name} {method}: lmx[{dtype}] {sides['lmx']['median_s'] * 1e3:.1f} ms "
          f"(MFU {sides['lmx']['mfu'] * 100:.1f}%), reference "
          f"{sides['torch']['median_s'] * 1e3:.1f} ms: lmx/reference time "
          f"{row['time_ratio']:.2f}x", flush=True)
    return row


def merge_raw(old: list[dict], new: list[dict]) -> list[dict]:
    """`old` raw rows with those run again (same workload, method and lmx dtype) replaced in
    place and the rest of `new` appended: a raw part run in pieces (`--only`) keeps the rows
    of the other pieces."""
    def key(r):
        return r["workload"], r["method"], r["lmx"]["dtype"]

    fresh = {key(r): r for r in new}
    kept = [fresh.pop(key(r), r) for r in old]
    return kept + [r for r in new if key(r) in fresh]


def _lora_vs_full(raw: list[dict]) -> list[dict]:
    out = []
    for lora in (r for r in raw if r["method"] == "lora"):
        full = next((r for r in raw if r["method"] == "full" and r["workload"] == lora["workload"]
                     and r["lmx"]["dtype"] == lora["lmx"]["dtype"]), None)
        if full is not None:
            a, b = lora["lmx"], full["lmx"]
            out.append({"workload": lora["workload"], "dtype": a["dtype"],
                        "flops_ratio": a["flops"] / b["flops"],
                        "xla_peak_ratio": a["xla_peak_bytes"] / b["xla_peak_bytes"],
                        "rss_ratio": a["rss_peak_increase_bytes"] / max(
                            b["rss_peak_increase_bytes"], 1),
                        "optimizer_state_ratio": (a["optimizer_state_bytes"] /
                                                  b["optimizer_state_bytes"])})
    return out


def _model_dirs(suite: workloads.Suite, ref: Worker, workdir: str) -> dict[str, str]:
    from lmx.hf import pretrained  # noqa: PLC0415  (finds the installed package's folder)
    minilm = str(pretrained.resolve_model_dir(workloads.MINILM))
    dirs = {"": "", workloads.MINILM: minilm}
    if any(w.pretrained == workloads.TINY_FOLDER for w in suite.workloads):
        dirs[workloads.TINY_FOLDER] = ref(
            "make_tiny_bert", dst=os.path.join(workdir, workloads.TINY_FOLDER),
            tokenizer_dir=minilm)
    return dirs


E2E_SIDES = ("lmx", "torch-plain", "torch-grouped")


def run(suite_name: str, dtypes: list[str], epochs: float, workdir: str, command: str,
        parts: set[str], only: set[str], sides: list[str], repeats: range,
        previous: dict | None = None) -> dict:
    """The suite's parts ("e2e-banking77", "e2e-conll", "raw", "compile"; "e2e" = both
    e2e parts), merged over `previous` (a results.json): a part run again replaces its rows.
    `only`: raw "workload:method" pairs; `sides`: end-to-end sides ("lmx[:LEVER]",
    "torch-plain", "torch-grouped"), each run once per round in `repeats` (a round's number
    rotates who goes first; a part can run one round at a time) in a fresh worker process;
    a (task, side, round) run again replaces the earlier one."""
    suite = workloads.get_suite(suite_name)
    results = _merge_base(previous, suite_name)
    results["machine"] = measure.machine()
    record_part(results, command, parts, results["machine"]["date"])
    lmx, ref = Worker("lmx"), Worker("torch")
    try:
        results["machine"]["jax_devices"] = lmx("devices")
        results["torch_threads"] = ref("threads")
        dirs = _model_dirs(suite, ref, workdir)
        if "raw" in parts or "compile" in parts:
            results["ceiling"] = lmx("ceiling", size=suite.ceiling_size, repeats=suite.repeats)
            print(json.dumps(results["ceiling"]), flush=True)
        raw = []
        for w in suite.workloads:
            for method in w.methods:
                for dtype in dtypes if "raw" in parts and (not only or
                                                           f"{w.name}:{method}" in only) else ():
                    # fresh workers per row: its RSS increase owes nothing to earlier rows
                    lmx_raw, ref_raw = Worker("lmx"), Worker("torch")
                    try:
                        raw.append(_raw_pair(lmx_raw, ref_raw, suite_name, w, method, dtype,
                                             dirs[w.pretrained], results["ceiling"],
                                             len(raw) % 2 == 0))
                    finally:
                        lmx_raw.close()
                        ref_raw.close()
        if "raw" in parts:
            results["raw"] = merge_raw(results["raw"], raw)
            results["lora_vs_full"] = _lora_vs_full(results["raw"])
        if "compile" in parts:
            results["compile"] = [lmx("compile_seconds", scan=scan, suite=suite_name)
                                  for scan in (False, True)]
    finally:
        lmx.close()
        ref.close()
    e2e_dir = dirs[suite.workloads[0].pretrained]
    for task in ("banking77", "conll"):
        if f"e2e-{task}" in parts or "e2e" in parts:
            runs = _end_to_end(suite, suite_name, task, dtypes[0], epochs or suite.e2e_epochs,
                               workdir, e2e_dir, sides, repeats, accuracy=bool(epochs))
            key = "e2e_accuracy" if epochs else "e2e"
            done = {(r["task"], r["side"], r["repeat"]) for r in runs}
            results[key] = [r for r in results[key]
                            if (r["task"], r["side"], r["repeat"]) not in done] + runs
    return results


def record_part(results: dict, command: str, parts: set[str], date: str) -> None:
    """Keeps every command's line (keyed by the command: rounds of one part run one command
    each, and each keeps its line); the same command run again replaces its own line."""
    results["part_runs"][command] = {"parts": ",".join(sorted(parts)), "command": command,
                                     "date": date}


def _merge_base(previous: dict | None, suite_name: str) -> dict:
    """`previous` (same suite) without rows of the old single-run format, or empty parts."""
    base = {"suite": suite_name, "torch_threads": None, "ceiling": None, "e2e": [],
            "e2e_accuracy": [], "raw": [], "lora_vs_full": [], "compile": [], "part_runs": {}}
    if previous and previous.get("suite") == suite_name:
        for key in base:
            if key in previous and key != "suite":
                base[key] = previous[key]
        for key in ("e2e", "e2e_accuracy"):  # rows before the two-reference format: dropped
            base[key] = [r for r in base[key] if "task" in r]
        if "command" in previous and not base["part_runs"]:  # a single-run file's other parts
            base["part_runs"]["raw,compile"] = {"command": previous["command"],
                                                "date": previous["machine"]["date"]}
    return base


def _end_to_end(suite, suite_name, task, dtype, epochs, workdir, model_dir, sides,
                repeats, accuracy: bool) -> list[dict]:
    """`repeats` rounds over `sides`, rotating who goes first; each run in a fresh worker
    process (its RSS is its own, nothing left from an earlier run)."""
    train_file = (workloads.conll_train_file(suite, workdir) if task == "conll" else
                  workloads.banking77_train_file(suite, workdir))
    runs = []
    for repeat in repeats:
        shift = repeat % len(sides)
        for order, side in enumerate(sides[shift:] + sides[:shift]):
            worker = Worker("lmx" if side.startswith("lmx") else "torch")
            try:
                if side.startswith("lmx"):
                    lever = side.partition(":")[2] or "default"
                    r = worker("end_to_end", suite=suite_name, model_dir=model_dir, dtype=dtype,
                               workdir=os.path.join(workdir, f"e2e-{task}-{repeat}-{order}"),
                               train_file=train_file, epochs=epochs, task=task,
                               overrides=workloads.LEVERS[lever], accuracy=accuracy)
                else:
                    r = worker("end_to_end", suite=suite_name, model_dir=model_dir,
                               train_file=train_file, epochs=epochs, task=task,
                               sampler=side.partition("-")[2], accuracy=accuracy)
            finally:
                worker.close()
            r.update(side=side, repeat=repeat, order=order)
            runs.append(r)
            print(f"end to end {task} [{repeat}.{order}] {side}: "
                  f"{r['examples_per_s']:.1f} ex/s ({r['wall_s']:.1f} s)", flush=True)
    return runs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", choices=("cpu", "tiny", "gpu", "gpu-tiny"), default="cpu")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="lmx compute dtypes of the raw steps (the first one end to end)")
    parser.add_argument("--epochs", type=float, default=0,
                        help="> 0: accuracy runs: BANKING77 this many epochs, validation "
                             "accuracy reported (3 epochs: ~5-10 min a side on 2 cores); 0: "
                             "throughput runs (the suite's e2e_epochs / e2e_steps)")
    parser.add_argument("--parts", default="e2e,raw,compile",
                        help="which parts to run: e2e (= e2e-banking77,e2e-conll), raw, "
                             "compile; results merge into --out's results.json")
    parser.add_argument("--sides", default=",".join(E2E_SIDES),
                        help="end-to-end sides: lmx[:LEVER] (bench/workloads.LEVERS), "
                             "torch-plain, torch-grouped")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end runs per side")
    parser.add_argument("--first-round", type=int, default=0,
                        help="number the end-to-end rounds from here (run rounds in parts)")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new results.json instead of merging into --out's")
    parser.add_argument("--only", default="",
                        help="raw steps of these workload:method pairs only, comma separated "
                             "(e.g. minilm-banking77:lora)")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    command = "python -m bench.run " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None
                                                     else argv))
    previous_path = os.path.join(args.out, "results.json")
    previous = None
    if not args.fresh and os.path.exists(previous_path):
        with open(previous_path) as f:
            previous = json.load(f)
    with tempfile.TemporaryDirectory() as workdir:
        results = run(args.suite, args.dtypes.split(","), args.epochs, workdir, command,
                      set(args.parts.split(",")), set(filter(None, args.only.split(","))),
                      args.sides.split(","),
                      range(args.first_round, args.first_round + args.repeats), previous)
    paths = report.write(results, args.out)
    print(report.markdown(results))
    print("wrote " + " and ".join(paths))
    return results


if __name__ == "__main__":
    main()
