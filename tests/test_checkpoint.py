"""Checkpoints that lose nothing: checksums catch damage and the previous step is used, a
different base is refused, and a run killed (SIGKILL, also mid async save) or preempted
(SIGTERM, exit 0) and restarted ends bit-identical to the uninterrupted run."""
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lmx.train import checkpoint
from lmx.train.step import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(step: int) -> TrainState:
    return TrainState(step=jnp.asarray(step, jnp.int32),
                      trainable={"params": {"w": jnp.full((64, 8), float(step))}},
                      opt_state=(jnp.full((64, 8), -float(step)), jnp.zeros((), jnp.int32)),
                      model_state={}, rng=jax.random.key(step))


def _saved(tmp_path, steps=(1, 2, 3)):
    mgr = checkpoint.manager(str(tmp_path), max_to_keep=5)
    for step in steps:
        mgr.save(_state(step), {"base": "b", "base_sha256": "0" * 64})
    mgr.wait_until_finished()
    return mgr


def _largest_file(step_dir):
    files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir / "state") for f in fs]
    return max(files, key=os.path.getsize)


def _damage(path, how):
    if how == "flip":
        blob = bytearray(open(path, "rb").read())
        blob[len(blob) // 2] ^= 0x01
        open(path, "wb").write(bytes(blob))
    elif how == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
    else:
        os.remove(path)


@pytest.mark.parametrize("how", ["flip", "truncate", "remove"])
def test_damaged_latest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path, caplog, how):
    mgr = _saved(tmp_path)
    latest = mgr.directory / "3"
    assert checkpoint.verify(latest) == ""
    _damage(_largest_file(latest), how)
    assert checkpoint.verify(latest) != ""
    with caplog.at_level(logging.WARNING):
        restored = checkpoint.restore(mgr, _state(0), {"base": "b", "base_sha256": "0" * 64})
    assert int(restored.step) == 2
    np.testing.assert_array_equal(restored.trainable["params"]["w"], np.full((64, 8), 2.0))
    np.testing.assert_array_equal(restored.opt_state[0], np.full((64, 8), -2.0))
    assert f"skipping damaged checkpoint {latest}" in caplog.text


def test_uncommitted_and_all_damaged_checkpoints(tmp_path, caplog):
    """Nothing readable is an error naming each checkpoint (no silent restart from step 0),
    unless a fresh start is allowed; a save that never committed is no checkpoint at all."""
    mgr = _saved(tmp_path, steps=(1, 2))
    os.remove(mgr.directory / "2" / checkpoint.CHECKSUM_FILE)  # as if killed mid commit
    _damage(_largest_file(mgr.directory / "1"), "flip")
    meta = {"base": "b", "base_sha256": "0" * 64}
    with pytest.raises(checkpoint.NoReadableCheckpoint) as error:
        checkpoint.restore(mgr, _state(0), meta)
    assert f"{mgr.directory / '1'}: " in str(error.value) and "sha256" in str(error.value)
    assert f"{mgr.directory / '2'}:" not in str(error.value)  # uncommitted: not a checkpoint
    assert "allow_fresh_start" in str(error.value)
    with caplog.at_level(logging.WARNING):
        assert checkpoint.restore(mgr, _state(0), meta, allow_fresh_start=True) is None
    assert "never committed" in caplog.text and str(mgr.directory / "1") in caplog.text


def test_a_run_killed_in_its_first_save_starts_fresh(tmp_path):
    mgr = _saved(tmp_path, steps=(1,))
    os.remove(mgr.directory / "1" / checkpoint.CHECKSUM_FILE)  # nothing ever committed
    assert checkpoint.restore(mgr, _state(0), {"base": "b", "base_sha256": "0" * 64}) is None


def test_checkpoint_of_another_base_is_refused(tmp_path):
    mgr = _saved(tmp_path, steps=(1,))
    with pytest.raises(ValueError, match=r"base_sha256='0+', not 'f+'"):
        checkpoint.restore(mgr, _state(0), {"base": "b", "base_sha256": "f" * 64})


def test_base_identity_hashes_the_pretrained_weight_files(tmp_path):
    for name, blob in (("a", b"weights"), ("b", b"weights"), ("c", b"weightz")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(blob)
        (tmp_path / name / "config.json").write_text(name)  # not part of the hash
    ids = [checkpoint.base_identity(str(tmp_path / n), "m", None)["base_sha256"] for n in "abc"]
    assert ids[0] == ids[1] != ids[2]


# --- kill / preempt / restart in subprocesses ------------------------------------------------

RUN = ["--config", "experiments/tiny_synthetic.py:runlocal", "--config.train.num_steps=6",
       "--config.train.checkpoint_every=2", "--config.train.log_every=1",
       "--config.train.eval_every=100", "--config.data.max_length=8"]


def subprocess_env(cache_dir, **extra):
    """The test process's environment (8 fake devices) plus a shared compilation cache."""
    env = {k: v for k, v in os.environ.items() if k != "LMX_FAULT"}
    env.update(PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra)
    return env


def launch(workdir, cache_dir, *flags, fault="", **env):
    env = subprocess_env(cache_dir, **({"LMX_FAULT": fault} if fault else {}), **env)
    return subprocess.Popen([sys.executable, "-m", "lmx.main", "--workdir", str(workdir), *RUN,
                             *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def read_trainable(path):
    """An exported `trainable/` tree as numpy, whatever topology wrote it."""
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        saved = ckptr.metadata(os.path.abspath(path)).item_metadata.tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                              saved)
        return jax.tree.map(np.asarray, ckptr.restore(os.path.abspath(path), target))


_SESSION = {}  # test_multihost imports these fixtures: one cache and one reference run


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
    """One persistent compilation cache for every subprocess run of the session."""
    if "cache" not in _SESSION:
        _SESSION["cache"] = tmp_path_factory.mktemp("jax_cache")
    return _SESSION["cache"]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, jax_cache):
    """The uninterrupted run (one process, 8 devices) the other runs must reproduce."""
    if "reference" not in _SESSION:
        workdir = tmp_path_factory.mktemp("reference")
        code, out, err = _finish(launch(workdir, jax_cache))
        assert code == 0, err[-3000:]
        _SESSION["reference"] = workdir
    return _SESSION["reference"]


def test_killed_and_preempted_run_resumes_bit_identical(tmp_path, jax_cache, reference_run):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    code, _, err = _finish(launch(run, jax_cache, fault="save:4:KILL"))  # save 4 in flight
    assert code == -9, err[-2000:]
    assert checkpoint.verify(ckpts / "2") == "" and checkpoint.verify(ckpts / "4") != ""
    code, _, err = _finish(launch(run, jax_cache, fault="step:5:KILL"))  # between saves
    assert code == -9 and "resumed from" in err and "at step 2" in err, err[-2000:]
    code, out, err = _finish(launch(run, jax_cache, fault="step:5:TERM"))  # preemption notice
    assert code == 0 and "resumed from" in err, err[-2000:]
    assert json.loads(out) == {"preempted": True, "step": 5}
    assert checkpoint.verify(ckpts / "5") == ""
    code, out, err = _finish(launch(run, jax_cache))
    assert code == 0 and "at step 5" in err, err[-2000:]
    resumed, straight = read_trainable(run / "trainable"), read_trainable(
        reference_run / "trainable")
    assert jax.tree.structure(resumed) == jax.tree.structure(straight)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(resumed),
                            jax.tree.leaves(straight)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    lora_b = resumed["peft"]["layer_0"]["attention"]["query"]["lora_b"]
    assert np.abs(lora_b).max() > 0  # it trained (lora_b starts at zero)
