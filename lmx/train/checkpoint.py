"""Orbax checkpoints of what trains: trainable leaves, optimizer state, model state, step, rng.

Frozen base weights are never written: they are rebuilt from the base (pretrained
folder or seed) on restore. `meta` (JSON) records which base the checkpoint belongs to
(name and content hash); a checkpoint of another base is refused.

Orbax has no checksum and no fallback, so every step directory carries `lmx_sha256.json`
(sha256 and size of every file of every item), written by process 0 inside the orbax
commit: after all processes wrote their shards and before the temporary directory becomes
the step directory, so a step without it never committed. `restore` verifies it and skips
a damaged step (truncated, missing or flipped bytes) with a warning naming it.

The data position needs no item of its own: the batch order is a pure function of
(seed, step) (`lmx.data.batching.train_batches`), so the restored step is the iterator position.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from lmx.train.step import TrainState

CHECKSUM_FILE = "lmx_sha256.json"
NEVER_COMMITTED = "(the save never committed)"


class Manager:
    """An orbax CheckpointManager plus the checksum written inside each commit."""

    def __init__(self, directory: str, max_to_keep: int):
        self.directory = epath.Path(directory).absolute()
        self._in_flight: int | None = None
        self.mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True,
                async_options=ocp.AsyncOptions(post_finalization_callback=self._write_checksum)))

    def _write_checksum(self) -> None:
        """Runs on process 0 in orbax's commit thread, before the tmp dir is renamed."""
        step = self._in_flight
        candidates = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        step_dir = candidates[-1] if candidates else self.directory / str(step)
        (step_dir / CHECKSUM_FILE).write_text(json.dumps(file_digests(step_dir), indent=1))

    def save(self, state: TrainState, meta: dict) -> int:
        """Saves asynchronously (every process must call it); returns the step."""
        step = int(jax.device_get(state.step))
        if step in self.mgr.all_steps():
            return step
        self.wait_until_finished()  # one save in flight: `_in_flight` names it
        self._in_flight = step
        try:
            self.mgr.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_item(state)), meta=ocp.args.JsonSave(meta)))
        except OSError as error:
            raise self._failed(error) from error
        return step

    def wait_until_finished(self) -> None:
        try:
            self.mgr.wait_until_finished()
        except OSError as error:  # e.g. ENOSPC in orbax's background write
            raise self._failed(error) from error

    def _failed(self, error: OSError) -> OSError:
        """The save's OSError restated: which step failed, and what a rerun resumes from."""
        committed = [s for s in self.mgr.all_steps() if s != self._in_flight
                     and (self.directory / str(s) / CHECKSUM_FILE).exists()]
        kept = (f"the last committed checkpoint, step {max(committed)}, is intact and a rerun "
                "resumes from it" if committed else "no checkpoint was committed before it")
        return OSError(error.errno, f"saving checkpoint step {self._in_flight} in "
                       f"{self.directory} failed ({error.strerror or error}: "
                       f"{error.filename or ''}); the run stopped; {kept}")

    def all_steps(self) -> list[int]:
        return sorted(self.mgr.all_steps())

    def close(self) -> None:
        self.mgr.close()


def manager(workdir: str, max_to_keep: int) -> Manager:
    return Manager(str(epath.Path(workdir) / "checkpoints"), max_to_keep)


def file_digests(step_dir: epath.Path) -> dict[str, list]:
    """{relative path: [size, sha256]} of the files of every item (subdirectories)."""
    digests, folders = {}, sorted(p for p in step_dir.iterdir() if p.is_dir())
    while folders:  # an explicit walk: epath has no recursive glob on GCS
        for path in sorted(folders.pop().iterdir()):
            if path.is_dir():
                folders.append(path)
            else:
                blob = path.read_bytes()
                digests[str(path.relative_to(step_dir))] = [len(blob),
                                                            hashlib.sha256(blob).hexdigest()]
    return dict(sorted(digests.items()))


def verify(step_dir: epath.Path) -> str:
    """'' if the step's files match its checksum file, else what is wrong."""
    sums = step_dir / CHECKSUM_FILE
    if not sums.exists():
        return f"no {CHECKSUM_FILE} {NEVER_COMMITTED}"
    try:
        expected = json.loads(sums.read_text())
    except ValueError as e:
        return f"{CHECKSUM_FILE} is unreadable ({e})"
    actual = file_digests(step_dir)
    for name, (size, digest) in expected.items():
        if name not in actual:
            return f"{name} is missing"
        if actual[name][0] != size:
            return f"{name} has {actual[name][0]} bytes, expected {size} (truncated?)"
        if actual[name][1] != digest:
            return f"{name} has sha256 {actual[name][1][:12]}..., expected {digest[:12]}..."
    extra = sorted(set(actual) - set(expected))
    return f"unexpected files {extra}" if extra else ""


def _to_item(state: TrainState) -> dict:
    """A plain nested dict: optax's state is flattened to numbered leaves (no custom nodes)."""
    item = {
        "step": state.step,
        "rng": jax.random.key_data(state.rng),
        "trainable": state.trainable,
        "opt_state": {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(state.opt_state))},
    }
    if state.model_state:
        item["model_state"] = state.model_state
    return item


def save(mgr: Manager, state: TrainState, meta: dict) -> int:
    """Saves asynchronously; call `mgr.wait_until_finished()` before exiting."""
    return mgr.save(state, meta)


def _check_base(step_dir: epath.Path, saved: dict, meta: dict) -> None:
    for key, value in meta.items():
        if saved.get(key) != value:
            raise ValueError(f"checkpoint {step_dir} belongs to {key}={saved.get(key)!r}, not "
                             f"{value!r}: refusing to resume a different base / method (use "
                             "another --workdir or --config.train.resume=False)")


def _restore_step(mgr: Manager, step: int, template: TrainState) -> TrainState:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_item(template))
    item = mgr.mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    opt_leaves = [item["opt_state"][str(i)] for i in range(len(item["opt_state"]))]
    return template.replace(
        step=item["step"],
        rng=jax.random.wrap_key_data(item["rng"]),
        trainable=item["trainable"],
        opt_state=jax.tree.unflatten(jax.tree.structure(template.opt_state), opt_leaves),
        model_state=item.get("model_state", template.model_state))


class NoReadableCheckpoint(RuntimeError):
    """Checkpoints were committed, and none of them can be restored."""


def restore(mgr: Manager, template: TrainState, meta: dict,
            allow_fresh_start: bool = False) -> TrainState | None:
    """The newest intact checkpoint restored into `template`'s structure and shardings.

    A damaged step is skipped with a warning for an older one; a step whose save never
    committed (no checksum file: killed mid save) does not count. None when nothing was ever
    committed (a fresh start). When committed steps exist and none can be read, that is an
    error naming each one and why (a silent restart from step 0 would lose the run), unless
    `allow_fresh_start` (config.train.allow_fresh_start). A checkpoint of another base is
    an error.
    """
    damaged = []
    for step in reversed(mgr.all_steps()):
        step_dir = mgr.directory / str(step)
        problem = verify(step_dir)
        if not problem:
            try:
                saved = json.loads((step_dir / "meta" / "metadata").read_text())
            except (OSError, ValueError) as e:
                problem = f"meta is unreadable ({e})"
        if problem:
            logging.warning("skipping damaged checkpoint %s: %s", step_dir, problem)
            if not problem.endswith(NEVER_COMMITTED):
                damaged.append(f"{step_dir}: {problem}")
            continue
        _check_base(step_dir, saved, meta)
        try:
            return _restore_step(mgr, step, template)
        except Exception as e:  # noqa: BLE001  (verified files that orbax still cannot read)
            logging.warning("skipping unreadable checkpoint %s: %s", step_dir, e)
            damaged.append(f"{step_dir}: orbax cannot read it ({type(e).__name__}: {e})")
    if damaged and not allow_fresh_start:
        raise NoReadableCheckpoint(
            f"{mgr.directory}: no checkpoint can be restored, so the run would start again "
            "from step 0:\n  " + "\n  ".join(damaged) + "\nMove them aside, use another "
            "--workdir, or set --config.train.allow_fresh_start=True to start from step 0.")
    return None


def base_identity(pretrained_dir: str, name: str, frozen: Any) -> dict[str, str]:
    """Which base a run adapts: its name and a content hash.

    A pretrained base hashes its weight files (cheap, host-local, topology-independent);
    a random-init base is fixed by name (size and seed), so it hashes paths, shapes and dtypes.
    """
    digest = hashlib.sha256()
    if pretrained_dir:
        root = epath.Path(pretrained_dir)
        files = sorted(p for p in root.iterdir()
                       if p.is_file() and p.suffix in (".safetensors", ".bin", ".msgpack"))
        for path in files:
            digest.update(path.name.encode())
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
    else:
        leaves = jax.tree_util.tree_leaves_with_path(frozen)
        for path, leaf in leaves:
            digest.update(f"{jax.tree_util.keystr(path)}:{leaf.shape}:{leaf.dtype};".encode())
    return {"base": name, "base_sha256": digest.hexdigest()}
