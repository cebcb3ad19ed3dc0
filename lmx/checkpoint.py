"""Orbax checkpoints of what trains: trainable leaves, optimizer state, model state, step, rng.

Frozen base weights are never written: they are rebuilt from the base (pretrained
folder or seed) on restore. `meta` (JSON) records which base the checkpoint belongs to.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from lmx.train import TrainState


def manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


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


def save(mgr: ocp.CheckpointManager, state: TrainState, meta: dict) -> None:
    """Saves asynchronously; call `mgr.wait_until_finished()` before exiting."""
    step = int(jax.device_get(state.step))
    mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_item(state)), meta=ocp.args.JsonSave(meta)))


def restore(mgr: ocp.CheckpointManager, template: TrainState, meta: dict) -> TrainState | None:
    """Restores the latest checkpoint into `template`'s structure and shardings, if any."""
    step = mgr.latest_step()
    if step is None:
        return None
    saved_meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    for key, value in meta.items():
        if saved_meta.get(key) != value:
            raise ValueError(f"checkpoint step {step} in {mgr.directory} belongs to "
                             f"{key}={saved_meta.get(key)!r}, not {value!r}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_item(template))
    item = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    opt_leaves = [item["opt_state"][str(i)] for i in range(len(item["opt_state"]))]
    return template.replace(
        step=item["step"],
        rng=jax.random.wrap_key_data(item["rng"]),
        trainable=item["trainable"],
        opt_state=jax.tree.unflatten(jax.tree.structure(template.opt_state), opt_leaves),
        model_state=item.get("model_state", template.model_state))

