"""MFU in metrics.jsonl (FLOPs of the compiled step per shape / window time / the peak) and the
jax.profiler trace switch (config.train.profile_steps)."""
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tiny_synthetic
from lmx.train import loop, mfu


class _Writer:
    def __init__(self):
        self.rows = []

    def write(self, step, split, values):
        self.rows.append({"step": step, **values})


def _metrics(loss):
    return {"loss": np.float32(loss), "grad_norm": np.float32(1.0)}


def test_mfu_is_window_flops_over_window_time_over_peak():
    """Planted FLOPs and times: each logged window's MFU is its own steps' FLOPs over its own
    seconds (not the run's), divided by the peak."""
    writer, peak = _Writer(), 1e10
    log = loop._TrainLog(writer, batch_size=4, start=0, peak_flops=peak)
    for step, flops in enumerate((1e9, 1e9, 2e9, 2e9), start=1):
        log.push(_metrics(0.5), step, flops)
    log.flush(4, train_seconds=3.0)
    for step in (5, 6):
        log.push(_metrics(0.5), step, 1e9)
    log.flush(6, train_seconds=5.0)
    first, second = writer.rows
    assert first["mfu"] == pytest.approx(6e9 / 3.0 / peak)
    assert first["step_seconds"] == pytest.approx(0.75)
    assert first["flops_per_step"] == pytest.approx(1.5e9)
    assert second["mfu"] == pytest.approx(2e9 / 2.0 / peak)
    assert second["step_seconds"] == pytest.approx(1.0)


def test_step_flops_per_shape_equal_xla_and_add_no_compile():
    """StepFlops gives XLA's cost_analysis FLOPs for each batch shape, and the jitted call
    that follows reuses its executable (one backend compile per shape, not two)."""
    step_fn = jax.jit(lambda w_DD, frozen, batch: (batch["x_BD"] @ w_DD @ frozen).sum())
    flops_of = mfu.StepFlops(step_fn)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **_: compiles.append(event)
        if event == "/jax/core/compile/backend_compile_duration" else None)
    w_DD, frozen = jnp.ones((32, 32)), jnp.ones((32, 32))
    flops = {}
    for B in (8, 64):
        batch = {"x_BD": jnp.ones((B, 32))}
        expected = step_fn.lower(w_DD, frozen, batch).compile().cost_analysis()["flops"]
        before = len(compiles)
        flops[B] = flops_of(w_DD, frozen, batch)
        assert flops_of(w_DD, frozen, batch) == flops[B]  # cached per shape
        step_fn(w_DD, frozen, batch).block_until_ready()
        assert len(compiles) == before, "the step compiled again after StepFlops"
        assert flops[B] == expected
    assert flops[64] > 4 * flops[8]


def test_run_logs_mfu_and_writes_a_profile(tmp_path):
    config = tiny_synthetic.get_config("runlocal")
    config.train.num_steps, config.train.log_every, config.train.profile_steps = 6, 3, 2
    config.train.peak_flops_per_second = 1e9
    loop.run(config, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [3, 6]
    for r in train:
        assert r["mfu"] == pytest.approx(r["flops_per_step"] / r["step_seconds"] / 1e9)
        assert r["flops_per_step"] > 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["peak_flops_per_second"] == 1e9
    assert results["peak_flops_source"] == "config.train.peak_flops_per_second"
    traces = glob.glob(str(tmp_path / "profile" / "**" / "*.xplane.pb"), recursive=True)
    assert traces and all(os.path.getsize(t) > 0 for t in traces), traces


def test_peak_of_a_cpu_is_measured_and_a_tpu_kind_is_looked_up():
    value, source = mfu.peak_flops(0.0, jax.devices()[0])
    assert source.startswith("measured") and 1e8 < value < 1e14

    class V5e:
        device_kind = "TPU v5 lite"
    assert mfu.peak_flops(0.0, V5e())[0] == 197e12
