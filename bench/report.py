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


def e2e_summary(runs: list[dict]) -> list[dict]:
    """Per (task, side): min / median examples/s over its runs, median tokens / compiles /
    RSS, and the median's ratio to each reference's median on the same task."""
    import statistics  # noqa: PLC0415
    rows = []
    for task, side in dict.fromkeys((r["task"], r["side"]) for r in runs):
        mine = [r for r in runs if (r["task"], r["side"]) == (task, side)]
        speeds = [r["examples_per_s"] for r in mine]
        def med(key, mine=mine):
            return statistics.median(r.get(key, math.nan) for r in mine)
        rows.append({"task": task, "side": side, "runs": len(mine), "steps": mine[0]["steps"],
                     "min": min(speeds), "median": statistics.median(speeds),
                     "wall_s": med("wall_s"), "setup_s": med("setup_s"),
                     "tokens_padded": med("tokens_padded"), "tokens_real": med("tokens_real"),
                     "compile_s": med("compile_s"), "rss": med("rss_peak_increase_bytes"),
                     "final_loss": med("final_loss")})
    for row in rows:
        for ref in ("torch-plain", "torch-grouped", "lmx"):
            other = next((r for r in rows if (r["task"], r["side"]) == (row["task"], ref)), None)
            row[f"vs_{ref}"] = row["median"] / other["median"] if other else math.nan
    return rows


def _e2e_lines(results: dict) -> list[str]:
    lines = ["## End to end: LoRA r=8 (query, value), one epoch of BANKING77 / a fixed CoNLL "
             "step budget", "",
             "Each run in a fresh worker process; rounds rotate which side goes first. "
             "`torch-plain`: random batches tokenized per batch, padded to the longest; "
             "`torch-grouped`: the split tokenized once, transformers' `LengthGroupedSampler`, "
             "padded to the longest of each batch (what `group_by_length=True` does); "
             "`lmx[:lever]`: `loop.Trainer`, wall time includes tokenizing and every compile.",
             "Every `lmx:LEVER` row is one lever over the default `lmx` (what it bought: the "
             "`vs lmx` column; `bench/workloads.LEVERS`).",
             "", "| task | side | runs | steps | median (ex/s) | min (ex/s) | "
             "vs plain (x) | vs grouped (x) | vs lmx (x) | median wall (s) | setup (s) | "
             "compile (s) | tokens padded / real | RSS increase (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in e2e_summary(results["e2e"]):
        lines.append(f"| {r['task']} | {r['side']} | {r['runs']} | {r['steps']} | "
                     f"{_f(r['median'], '.1f')} | {_f(r['min'], '.1f')} | "
                     f"{_f(r['vs_torch-plain'], '.2f')}x | {_f(r['vs_torch-grouped'], '.2f')}x | "
                     f"{_f(r['vs_lmx'], '.2f')}x | "
                     f"{_f(r['wall_s'], '.1f')} | {_f(r['setup_s'], '.1f')} | "
                     f"{_f(r['compile_s'], '.1f')} | {_f(r['tokens_padded'], '.0f')} / "
                     f"{_f(r['tokens_real'], '.0f')} | {_f(r['rss'], '.0f', MiB)} |")
    lines += ["", "Runs in order (repeat.order side: examples/s):", ""]
    lines += ["- " + ", ".join(f"{r['task']} {r['repeat']}.{r['order']} {r['side']}: "
                               f"{r['examples_per_s']:.1f}" for r in results["e2e"])]
    if results["e2e_accuracy"]:
        lines += ["", "Accuracy runs (validation accuracy after the epochs; ex/s of that run):",
                  "", "| task | side | steps | examples/s | validation accuracy |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['side']} | {r['steps']} | "
                  f"{_f(r['examples_per_s'], '.1f')} | {_f(r.get('validation_accuracy'), '.4f')} |"
                  for r in results["e2e_accuracy"]]
    return lines


def measured(results: dict, part: str) -> str:
    """"; measured DATE" of the latest part run that ran `part` (a section's rows may be older
    than the file's other parts), or "" if none says so."""
    dates = [p["date"][:10] for key, p in results["part_runs"].items()
             if part in p.get("parts", key).split(",")]  # old entries: keyed by their parts
    return f"; measured {max(dates)}" if dates else ""


def markdown(results: dict) -> str:
    m, c = results["machine"], results["ceiling"] or {}
    v = m["versions"]
    lines = [
        "# lmx vs transformers + peft: side by side", "",
        "Parts (merged into one file; each line the command that produced it):", ""]
    lines += [f"- `{p['command']}` ({p['date']})" for p in results["part_runs"].values()]
    lines += [
        "",
        f"Machine: {m.get('cpu_model', '?')}, {m.get('cpus', '?')} CPUs "
        f"({m.get('threads_per_core', '?')} threads per core), AMX: {m.get('cpu_flags_amx')}; "
        f"JAX devices: {', '.join(m['jax_devices'])}; torch threads: {results['torch_threads']}  ",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()), "",
        f"Matmul ceiling ({c.get('size')}^3, jitted, median): float32 "
        f"{_f(c.get('float32_flops_per_s'), '.1f', 1e9)} GFLOP/s; bfloat16 inputs with float32 "
        f"accumulation {_f(c.get('bfloat16_flops_per_s'), '.1f', 1e9)} GFLOP/s. MFU = XLA FLOPs "
        "per step / step time / the ceiling of the dtype used (the reference runs float32 and is "
        "credited with the same FLOPs).", ""]
    lines += _e2e_lines(results)
    raw_date = measured(results, "raw")
    lines += ["", f"## Raw training step (fixed batch, median after warmup{raw_date})", ""]
    lines += _speed_rows(results["raw"]) + [
        "", f"## Memory (in the raw steps' workers{raw_date})", ""] + _memory_rows(results["raw"])
    compiled = measured(results, "compile")
    lines += ["", f"## Compile time of a full fine-tuning step (lower + compile{compiled})", "",
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
