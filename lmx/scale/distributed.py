"""Multi-controller JAX: one process per host, started before anything touches a device.

`initialize` is called by the launcher. Explicit flags win; otherwise a cluster is detected
from the environment (Cloud TPU pod slices through JAX's own detection, SLURM, or the
`JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` variables a GPU launcher
sets, or LMX_DISTRIBUTED=1 to let JAX detect it). A single process needs nothing. Batches
reach the devices as each host's rows: `global_batch` (every host made the whole batch) or
`host_batch` (each host made only its rows, `lmx.data.hostdata`).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding


def cluster_from_env(env=os.environ) -> str:
    """'' (single process) or which cluster the environment describes."""
    if env.get("LMX_DISTRIBUTED") == "1":  # tpu/pod.py run: JAX detects the cluster itself
        return "auto"
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "env"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return "slurm"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"
    return ""


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               env=os.environ) -> str:
    """Starts `jax.distributed` when this is one process of many; returns how it was told."""
    if coordinator_address:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} / --num_processes={num_processes}: "
                             "both are needed with --coordinator_address, 0 <= id < num")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
        return "flags"
    how = cluster_from_env(env)
    if how == "env":
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
    elif how:  # JAX's own cluster detection (Cloud TPU metadata, SLURM variables)
        jax.distributed.initialize()
    return how


def is_lead() -> bool:
    """Process 0 writes logs, results and plots; every process takes part in checkpoints."""
    return jax.process_index() == 0


def process_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> slice:
    """The contiguous rows of a global batch that this process's devices hold."""
    index_map = sharding.addressable_devices_indices_map(global_shape)
    rows = set()
    for index in index_map.values():
        rows.update(range(*index[0].indices(global_shape[0])))
    lo, hi = min(rows), max(rows) + 1
    if len(rows) != hi - lo:
        raise ValueError(f"this process's batch rows are not contiguous under {sharding.spec}")
    return slice(lo, hi)


def global_batch(batch: dict[str, np.ndarray], sharding_of) -> dict[str, jax.Array]:
    """Host batches (every process holds the same global batch) -> global jax.Arrays.

    One process: `device_put`. Many: each process hands over only its own rows
    (`make_array_from_process_local_data`), so no host copies the rest to a device.
    """
    out = {}
    for key, value in batch.items():
        sharding = sharding_of(value.ndim)
        if jax.process_count() == 1:
            out[key] = jax.device_put(value, sharding)
        else:
            rows = process_rows(sharding, value.shape)
            out[key] = jax.make_array_from_process_local_data(sharding, value[rows], value.shape)
    return out


def host_batch(batch: dict[str, np.ndarray], sharding_of, batch_size: int
               ) -> dict[str, jax.Array]:
    """This process's rows of a global batch (`process_rows`; per-host input) -> global
    jax.Arrays of `batch_size` rows; no process holds another's rows."""
    return {key: jax.make_array_from_process_local_data(
        sharding_of(value.ndim), value, (batch_size, *value.shape[1:]))
        for key, value in batch.items()}
