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


def run(suite_name: str, dtypes: list[str], epochs: float, workdir: str, command: str,
        lmx: Worker, ref: Worker, parts: set[str], only: set[str]) -> dict:
    """The suite's parts ("e2e", "raw", "compile"); `only`: raw "workload:method" pairs."""
    suite = workloads.get_suite(suite_name)
    results = {"command": command, "suite": suite_name, "machine": measure.machine(),
               "torch_threads": ref("threads"), "e2e": [], "e2e_ratio": None, "raw": [],
               "lora_vs_full": [], "compile": []}
    results["machine"]["jax_devices"] = lmx("devices")
    results["ceiling"] = lmx("ceiling", size=suite.ceiling_size, repeats=suite.repeats)
    print(json.dumps(results["ceiling"]), flush=True)
    dirs = _model_dirs(suite, ref, workdir)
    if "e2e" in parts:
        _end_to_end(results, suite, suite_name, dtypes[0], epochs, workdir,
                    dirs[suite.workloads[0].pretrained], lmx, ref)
    raw = []
    for w in suite.workloads:
        for method in w.methods:
            for dtype in dtypes if "raw" in parts and (not only or f"{w.name}:{method}" in only) \
                    else ():
                raw.append(_raw_pair(lmx, ref, suite_name, w, method, dtype,
                                     dirs[w.pretrained], results["ceiling"], len(raw) % 2 == 0))
    results["raw"], results["lora_vs_full"] = raw, _lora_vs_full(raw)
    if "compile" in parts:
        results["compile"] = [lmx("compile_seconds", scan=scan, suite=suite_name)
                              for scan in (False, True)]
    return results


def _end_to_end(results, suite, suite_name, dtype, epochs, workdir, e2e_dir, lmx, ref) -> None:
    """LoRA on BANKING77 (MiniLM; the tiny folder in the tiny suite), lmx then the reference."""
    train_file = workloads.banking77_train_file(suite, workdir)
    results["e2e"] = [
        lmx("end_to_end", suite=suite_name, model_dir=e2e_dir, dtype=dtype,
            workdir=os.path.join(workdir, "e2e"), train_file=train_file, epochs=epochs),
        ref("end_to_end", suite=suite_name, model_dir=e2e_dir, train_file=train_file,
            epochs=epochs)]
    results["e2e_ratio"] = (results["e2e"][0]["examples_per_s"] /
                            results["e2e"][1]["examples_per_s"])
    print(f"end to end: lmx {results['e2e'][0]['examples_per_s']:.1f} ex/s, reference "
          f"{results['e2e'][1]['examples_per_s']:.1f} ex/s", flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", choices=("cpu", "tiny", "gpu", "gpu-tiny"), default="cpu")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="lmx compute dtypes of the raw steps (the first one end to end)")
    parser.add_argument("--epochs", type=float, default=0,
                        help="> 0: the end-to-end runs train this many epochs and report "
                             "validation accuracy (3 MiniLM epochs: ~25 min a side on 2 cores)")
    parser.add_argument("--parts", default="e2e,raw,compile",
                        help="which parts to run (a partial run is not a result to commit)")
    parser.add_argument("--only", default="",
                        help="raw steps of these workload:method pairs only, comma separated "
                             "(e.g. minilm-banking77:lora)")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    command = "python -m bench.run " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None
                                                     else argv))
    lmx, ref = Worker("lmx"), Worker("torch")
    try:
        with tempfile.TemporaryDirectory() as workdir:
            results = run(args.suite, args.dtypes.split(","), args.epochs, workdir, command,
                          lmx, ref, set(args.parts.split(",")), set(filter(None,
                                                                         args.only.split(","))))
    finally:
        lmx.close()
        ref.close()
    paths = report.write(results, args.out)
    print(report.markdown(results))
    print("wrote " + " and ".join(paths))
    return results


if __name__ == "__main__":
    main()
