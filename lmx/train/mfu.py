"""Model FLOPs utilisation: XLA's FLOPs of the compiled train step per batch shape, the peak
they are divided by, and a jax.profiler trace of a few steps (config.train.profile_steps)."""
from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

# Per-chip dense bf16 peaks (FLOP/s), vendor figures, by the start of `device.device_kind`.
PEAKS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def peak_flops(stated: float, device: jax.Device) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from): the config's stated value, PEAKS for the device
    kind, or (CPUs, unknown kinds) a measured jitted 1024^3 float32 matmul, best of 5."""
    if stated:
        return stated, "config.train.peak_flops_per_second"
    kind = device.device_kind
    for name, value in PEAKS.items():
        if kind.startswith(name):
            return value, f"lmx.train.mfu.PEAKS[{name!r}] (dense bf16, vendor figure)"
    return measured_matmul(device), f"measured on {kind}: jitted 1024^3 float32 matmul, best of 5"


def measured_matmul(device: jax.Device, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` jitted size^3 float32 matmuls on `device`."""
    a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


class StepFlops:
    """FLOPs of one call of `jitted` per batch shape (its last argument): lowered and compiled
    once per new shape, an executable the jitted call then reuses (no second compile).
    On several devices, XLA's count is per device (the partitioned program)."""

    def __init__(self, jitted: Callable):
        self.jitted, self.by_shape = jitted, {}

    def __call__(self, *args: Any) -> float:
        key = tuple((k, x.shape, str(x.dtype)) for k, x in sorted(args[-1].items()))
        if key not in self.by_shape:
            cost = self.jitted.lower(*args).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            self.by_shape[key] = float(cost.get("flops", 0.0)) if cost else 0.0
        return self.by_shape[key]


class Profile:
    """A jax.profiler trace of steps first .. first + count - 1 into `directory`."""

    def __init__(self, directory: str, count: int, first: int = 2):
        self.directory, self.first, self.last = directory, first, first + count - 1
        self.active = False

    def before(self, step: int) -> None:
        if self.last >= self.first and step == self.first:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, step: int, state: Any) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
