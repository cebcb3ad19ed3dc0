"""bench/results.json and bench/RESULTS.md from one run's results (every number with its unit)."""
from __future__ import annotations

import json
import math
import os

MiB = 2**20


def _f(x, fmt: str = ".3g", scale: float = 1.0) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x / scale, fmt)


def _speed_rows(raw: list[dict]) -> list[str]:
    rows = ["| workload | method | lmx dtype | lmx step (ms) | reference step (ms) | "
            "lmx / reference time (x) | lmx (examples/s) | reference (examples/s) | "
            "XLA GFLOP/step | lmx MFU (%) | reference MFU (%) | lmx compile (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in raw:
        lmx, ref = r["lmx"], r["torch"]
        rows.append(f"| {r['workload']} | {r['method']} | {lmx['dtype']} | "
                    f"{_f(lmx['median_s'], '.1f', 1e-3)} ms | {_f(ref['median_s'], '.1f', 1e-3)} ms"
                    f" | {_f(r['time_ratio'], '.2f')}x | "
                    f"{_f(lmx['examples_per_s'], '.1f')} ex/s | "
                    f"{_f(ref['examples_per_s'], '.1f')} ex/s | "
                    f"{_f(lmx['flops'], '.2f', 1e9)} GFLOP |"
                    f" {_f(lmx['mfu'] * 100, '.1f')}% | {_f(ref['mfu'] * 100, '.1f')}% | "
                    f"{_f(lmx['compile_s'], '.1f')} s |")
    return rows


def _memory_rows(raw: list[dict]) -> list[str]:
    rows = ["| workload | method | lmx dtype | lmx RSS increase (MiB) | reference RSS increase "
            "(MiB) | XLA peak buffers (MiB) | lmx optimizer state (MiB) | reference optimizer "
            "state (MiB) | lmx frozen-leaf optimizer state (B) | lmx saved (MiB) | reference "
            "saved (MiB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in raw:
        lmx, ref = r["lmx"], r["torch"]
        rows.append(f"| {r['workload']} | {r['method']} | {lmx['dtype']} | "
                    f"{_f(lmx['rss_peak_increase_bytes'], '.1f', MiB)} MiB | "
                    f"{_f(ref['rss_peak_increase_bytes'], '.1f', MiB)} MiB | "
                    f"{_f(lmx['xla_peak_bytes'], '.1f', MiB)} MiB | "
                    f"{_f(lmx['optimizer_state_bytes'], '.2f', MiB)} MiB | "
                    f"{_f(ref['optimizer_state_bytes'], '.2f', MiB)} MiB | "
                    f"{lmx['frozen_optimizer_state_bytes']} B | "
                    f"{_f(lmx['saved_trainable_bytes'], '.2f', MiB)} MiB | "
                    f"{_f(ref['saved_trainable_bytes'], '.2f', MiB)} MiB |")
    return rows


def markdown(results: dict) -> str:
    m, c = results["machine"], results["ceiling"]
    v = m["versions"]
    lines = [
        "# lmx vs transformers + peft: one run, side by side", "",
        f"Command: `{results['command']}`  ",
        f"Date: {m['date']}  ",
        f"Machine: {m.get('cpu_model', '?')}, {m.get('cpus', '?')} CPUs "
        f"({m.get('threads_per_core', '?')} threads per core), AMX: {m.get('cpu_flags_amx')}; "
        f"JAX devices: {', '.join(m['jax_devices'])}; torch threads: {results['torch_threads']}  ",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()), "",
        f"Matmul ceiling ({c['size']}^3, jitted, median): float32 "
        f"{_f(c['float32_flops_per_s'], '.1f', 1e9)} GFLOP/s; bfloat16 inputs with float32 "
        f"accumulation {_f(c['bfloat16_flops_per_s'], '.1f', 1e9)} GFLOP/s. MFU = XLA FLOPs per "
        "step / step time / the ceiling of the dtype used (the reference runs float32 and is "
        "credited with the same FLOPs).", "",
        "## End to end: LoRA r=8 (query, value) on BANKING77", "",
        "| side | steps | batch | wall to last step (s) | setup (s) | examples/s | final loss | "
        "RSS increase (MiB) |", "|---|---|---|---|---|---|---|---|"]
    for r in results["e2e"]:
        lines.append(f"| {r['side']} ({r['dtype']}) | {r['steps']} | {r['batch_size']} | "
                     f"{_f(r['wall_s'], '.1f')} s | {_f(r['setup_s'], '.1f')} s | "
                     f"{_f(r['examples_per_s'], '.1f')} ex/s | {_f(r['final_loss'], '.3f')} | "
                     f"{_f(r['rss_peak_increase_bytes'], '.1f', MiB)} MiB |"
                     + (f" validation accuracy {r['validation_accuracy']:.4f} |"
                        if "validation_accuracy" in r else ""))
    lines += ["", f"lmx / reference end-to-end examples/s: "
              f"{_f(results['e2e_ratio'], '.2f')}x", "",
              "Per-run RSS increase: VmHWM (reset on entry) minus VmRSS at entry, in each "
              "side's own worker process (earlier runs of the same side stay resident).", "",
              "## Raw training step (fixed batch, median after warmup)", ""]
    lines += _speed_rows(results["raw"]) + ["", "## Memory", ""] + _memory_rows(results["raw"])
    lines += ["", "## Compile time of a full fine-tuning step (lower + compile)", "",
              "| model | scan over layers | compile (s) |", "|---|---|---|"]
    lines += [f"| {r['size']} x{r['num_layers']} layers | {r['scan_layers']} | "
              f"{_f(r['compile_s'], '.1f')} s |"
              for r in results["compile"]]
    lines += ["", "## LoRA vs full fine-tuning inside lmx", "",
              "| workload | dtype | LoRA / full step FLOPs (x) | "
              "LoRA / full XLA peak buffers (x) | "
              "LoRA / full RSS increase (x) | LoRA / full optimizer state (x) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['workload']} | {r['dtype']} | {_f(r['flops_ratio'], '.3f')}x | "
              f"{_f(r['xla_peak_ratio'], '.3f')}x | {_f(r['rss_ratio'], '.3f')}x | "
              f"{_f(r['optimizer_state_ratio'], '.4f')}x |" for r in results["lora_vs_full"]]
    return "\n".join(lines) + "\n"


def write(results: dict, out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, "results.json"), os.path.join(out_dir, "RESULTS.md")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1, allow_nan=True)
    with open(md_path, "w") as f:
        f.write(markdown(results))
    return json_path, md_path
