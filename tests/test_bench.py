"""The bench harness (bench/run.py, bench/gpu.sh) on its CI-sized settings, in subprocesses."""
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bench import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW_FIELDS = ("median_s", "examples_per_s", "mfu", "rss_peak_bytes", "rss_peak_increase_bytes",
              "optimizer_state_bytes", "saved_trainable_bytes", "trainable_params",
              "total_params")
LMX_FIELDS = ("flops", "compile_s", "xla_peak_bytes", "xla_temp_bytes",
              "frozen_optimizer_state_bytes")
E2E_FIELDS = ("steps", "wall_s", "setup_s", "examples_per_s", "final_loss",
              "rss_peak_increase_bytes")


def _env():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = REPO
    return env


def _numbers(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _numbers(v, f"{path}/{i}")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


def test_tiny_suite_writes_every_field_and_lora_needs_fewer_flops(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--suite", "tiny", "--dtypes",
                           "float32", "--repeats", "1", "--sides", "lmx,torch-grouped",
                           "--out", str(tmp_path)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=400)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"tiny suite: {elapsed:.1f} s")
    results = json.loads((tmp_path / "results.json").read_text())
    bad = [(p, v) for p, v in _numbers(results) if not math.isfinite(v)]
    assert not bad, bad
    assert results["machine"]["cpu_model"] and results["machine"]["versions"]["peft"]
    assert results["ceiling"]["float32_flops_per_s"] > 0
    assert [(r["task"], r["side"]) for r in results["e2e"]] == [
        (task, side) for task in ("banking77", "conll")
        for side in ("lmx", "torch-grouped")]
    for r in results["e2e"]:
        assert all(r[f] > 0 for f in E2E_FIELDS), r
        assert r["tokens_padded"] >= r["tokens_real"] > 0, r
    summary = {(r["task"], r["side"]): r for r in report.e2e_summary(results["e2e"])}
    lmx, grouped = summary["conll", "lmx"], summary["conll", "torch-grouped"]
    assert grouped["vs_torch-grouped"] == 1.0
    assert lmx["vs_torch-grouped"] == pytest.approx(lmx["median"] / grouped["median"])
    rows = {r["method"]: r for r in results["raw"]}
    assert set(rows) == {"lora", "full"}
    for r in rows.values():
        assert all(r[side][f] > 0 for side in ("lmx", "torch") for f in RAW_FIELDS), r
        assert all(f in r["lmx"] for f in LMX_FIELDS)
    for side in ("lmx", "torch"):  # each raw row in fresh workers: its memory is its own
        assert len({r[side]["pid"] for r in results["raw"]}) == len(results["raw"])
    lora, full = rows["lora"]["lmx"], rows["full"]["lmx"]
    # No weight gradients for frozen weights: a LoRA step costs fewer FLOPs than a full one.
    assert lora["flops"] < full["flops"]
    assert lora["frozen_optimizer_state_bytes"] == 0
    assert lora["optimizer_state_bytes"] < full["optimizer_state_bytes"] / 10
    assert lora["trainable_params"] == rows["lora"]["torch"]["trainable_params"] or (
        lora["trainable_params"] < full["trainable_params"] / 10)
    assert [c["scan_layers"] for c in results["compile"]] == [False, True]
    assert results["lora_vs_full"][0]["flops_ratio"] < 1
    md = (tmp_path / "RESULTS.md").read_text()
    for needle in ("`python -m bench.run --suite tiny", "Machine:", "Versions:",
                   "GFLOP/s", "ex/s", "MiB", "## LoRA vs full fine-tuning inside lmx"):
        assert needle in md


def test_gpu_script_runs_tiny_on_cpu(tmp_path):
    env = {**_env(), "BENCH_OUT": str(tmp_path), "BENCH_SKIP_SUITE": "1"}
    proc = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu.sh"), "--tiny"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "pretrain.json").read_text())
    assert 0 < result["mfu"] < 1.5 and result["flops"] > 0
    assert proc.stdout.strip().splitlines()[-1].startswith("| gpt2-tiny")


def test_grouped_reference_uses_transformers_sampler_and_pads_less():
    """The careful reference's epoch: every training row once, in transformers'
    LengthGroupedSampler order (planted lengths), padding far fewer tokens than random batches."""
    from bench import torch_side
    rng = np.random.default_rng(0)
    train_idx = np.sort(rng.choice(3000, 2000, replace=False))
    lengths = rng.integers(5, 64, 3000).tolist()
    padded = {}
    for sampler in ("plain", "grouped"):
        batches = torch_side._epoch_batches(sampler, train_idx, lengths, 32, epoch=1)
        assert len(batches) == 2000 // 32
        rows = np.concatenate(batches)
        assert len(set(rows.tolist())) == len(rows) and set(rows.tolist()) <= set(train_idx.tolist())
        padded[sampler] = sum(32 * max(lengths[i] for i in b) for b in batches)
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices
    expected = get_length_grouped_indices([lengths[i] for i in train_idx], 32,
                                          generator=torch.Generator().manual_seed(1))
    assert np.array_equal(np.concatenate(torch_side._epoch_batches(
        "grouped", train_idx, lengths, 32, epoch=1)), train_idx[expected[:len(rows)]])
    assert padded["grouped"] < 0.6 * padded["plain"]


def test_every_part_command_is_kept_and_old_sections_carry_their_date():
    """Rounds run one command each: every command keeps its line in RESULTS.md (keyed by the
    command, not the part); a section whose rows are older than the file says its own date."""
    from bench import run
    results = run._merge_base({"suite": "cpu", "part_runs": {"raw,compile": {
        "command": "python -m bench.run --suite cpu", "date": "2026-11-29T20:05:41+00:00"}}},
        "cpu")
    for r, day in ((0, "2026-12-06T05:13:49"), (1, "2026-12-06T05:19:00")):
        run.record_part(results, f"python -m bench.run --parts e2e-banking77 --first-round {r}",
                        {"e2e-banking77"}, day)
    assert [p["command"][-1] for p in results["part_runs"].values()] == ["u", "0", "1"]
    assert report.measured(results, "raw") == "; measured 2026-11-29"
    assert report.measured(results, "compile") == "; measured 2026-11-29"
    assert report.measured(results, "e2e-banking77") == "; measured 2026-12-06"
    assert report.measured(results, "e2e-conll") == ""


def test_a_raw_part_run_in_pieces_keeps_the_other_pieces_rows():
    from bench import run

    def row(workload, method, t):
        return {"workload": workload, "method": method, "lmx": {"dtype": "float32", "t": t}}

    old = [row("minilm", "lora", 1), row("minilm", "full", 1), row("resnet50", "full", 1)]
    merged = run.merge_raw(old, [row("resnet50", "full", 2), row("minilm", "lora", 2),
                                 row("gpt2", "full", 2)])
    assert [(r["workload"], r["method"], r["lmx"]["t"]) for r in merged] == [
        ("minilm", "lora", 2), ("minilm", "full", 1), ("resnet50", "full", 2),
        ("gpt2", "full", 2)]
