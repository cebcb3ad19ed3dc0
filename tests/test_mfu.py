"""MFU in metrics.jsonl (FLOPs of the compiled step per shape / window time / the peak) and the
jax.profiler trace switch (config.train.profile_steps)."""
import glob
import json
import os

import flax.linen as nn
import jax
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


def test_step_flops_per_shape_equal_xla_and_add_no_compile(tmp_path):
    """StepFlops gives XLA's cost_analysis FLOPs of the step for each padded shape, and the
    jitted call that follows reuses its executable (one backend compile per shape, not two)."""
    config = tiny_synthetic.get_config("")
    trainer = loop.Trainer(config, str(tmp_path))
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **_: compiles.append(event)
        if event == "/jax/core/compile/backend_compile_duration" else None)
    batch = next(trainer.train_stream(0))
    flops = {}
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
        for T in (8, 16):  # the batch cut or zero-padded (mask False) to T
            b = trainer.device_batch({
                k: np.pad(v, ((0, 0), (0, max(T - v.shape[1], 0))))[:, :T] if v.ndim == 2 else v
                for k, v in batch.items()})
            expected = trainer.train_step.lower(trainer.state, trainer.frozen, b).compile(
                ).cost_analysis()["flops"]
            before = len(compiles)
            flops[T] = trainer.step_flops(trainer.state, trainer.frozen, b)
            trainer.state, _ = trainer.train_step(trainer.state, trainer.frozen, b)
            assert len(compiles) == before, "the step compiled again after StepFlops"
            assert flops[T] == expected
    assert flops[16] > 1.5 * flops[8]


def test_run_logs_mfu_and_writes_a_profile(tmp_path):
    config = tiny_synthetic.get_config("runlocal")
    config.train.profile_steps = 3
    config.train.peak_flops_per_second = 1e9
    loop.run(config, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [10, 20]
    for r in train:
        assert r["mfu"] == pytest.approx(r["flops_per_step"] / r["step_seconds"] / 1e9)
        assert r["flops_per_step"] > 0
    results = json.load(open(tmp_path / "results.json"))
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
