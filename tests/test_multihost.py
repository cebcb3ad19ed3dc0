"""Two processes x 4 fake CPU devices (jax.distributed on loopback) train exactly like one
process x 8 devices: the same loss at every step and the same final trainable weights."""
import json
import os
import socket

import jax
import numpy as np
from test_checkpoint import jax_cache, launch, read_trainable, reference_run  # noqa: F401


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
