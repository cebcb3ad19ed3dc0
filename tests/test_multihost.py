"""Two processes x 4 fake CPU devices (jax.distributed on loopback) train exactly like one
process x 8 devices: the same loss at every step and the same final trainable weights."""
import json
import os
import socket

import jax
import numpy as np
from test_checkpoint import jax_cache, launch, read_trainable, reference_run  # noqa: F401

from lmx.train import checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(procs, timeout=300):
    """Waits for all; on a hang or a failed peer kills every process (a lone peer aborts)."""
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for code, _, err in outputs:
        assert code == 0, err[-3000:]
    return outputs


def _train_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if r["split"] == "train"]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"a step was logged twice: {steps}"  # process 0 only
    return {r["step"]: r["loss"] for r in rows}


def test_two_processes_match_one_process(tmp_path, jax_cache, reference_run):
    port, four = _free_port(), "--xla_force_host_platform_device_count=4"
    multi = [launch(tmp_path, jax_cache, f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2", f"--process_id={i}", XLA_FLAGS=four) for i in range(2)]
    (_, out0, _), (_, out1, _) = _wait(multi)
    assert json.loads(out0[out0.index("{\n"):])["step"] == 6  # gloo chatters before it
    assert "\"step\"" not in out1  # only process 0 prints the summary
    multi_losses, single_losses = _train_losses(tmp_path), _train_losses(reference_run)
    assert sorted(multi_losses) == list(range(1, 7)) == sorted(single_losses)
    for step in multi_losses:
        assert abs(multi_losses[step] - single_losses[step]) <= 1e-6, step
    a, b = read_trainable(tmp_path / "trainable"), read_trainable(reference_run / "trainable")
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert any(np.abs(x).max() > 0 for x in jax.tree.leaves(a["peft"]))  # LoRA B moved
    assert os.path.exists(tmp_path / "checkpoints" / "6" / "lmx_sha256.json")


def test_sigterm_on_two_processes_saves_one_step_and_resumes_to_the_same_weights(
        tmp_path, jax_cache, reference_run):
    """Both processes get SIGTERM after step 3 (a preemption notice); JAX's preemption sync
    point makes them save the same step and exit 0; rerun, they finish the 6 steps. The
    weights equal the uninterrupted one-process run's within 1e-6 (a 2 x 4-device run sums
    its gradients in another order than 1 x 8, as in the test above; not bit-identical)."""
    four = "--xla_force_host_platform_device_count=4"

    def both(**fault):
        port = _free_port()
        return _wait([launch(tmp_path, jax_cache, f"--coordinator_address=127.0.0.1:{port}",
                             "--num_processes=2", f"--process_id={i}", XLA_FLAGS=four, **fault)
                      for i in range(2)])

    # SIGTERM after step 3 (no routine save there: checkpoint_every=2); 0.5 s per step leaves
    # the sync point's round trip time to land (measured: it lands on the notice's own step)
    (_, out0, err0), (_, _, err1) = both(fault="step:3:TERM", LMX_FAULT_PAUSE="0.5")
    summary = json.loads(out0[out0.index("{\n"):])
    assert summary["preempted"] is True and summary["step"] in (3, 4, 5), summary
    print("preempted at step", summary["step"])
    step = summary["step"]
    for err in (err0, err1):  # each process saved that step
        assert f"preempted: checkpoint of step {step} saved" in err, err[-3000:]
    assert checkpoint.verify(tmp_path / "checkpoints" / str(step)) == ""
    (_, out0, err0), (_, _, err1) = both()
    assert json.loads(out0[out0.index("{\n"):])["step"] == 6
    for err in (err0, err1):
        assert f"at step {step}" in err and "resumed from" in err, err[-3000:]
    a, b = read_trainable(tmp_path / "trainable"), read_trainable(reference_run / "trainable")
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
