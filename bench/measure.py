"""What bench runs measure: step times, the matmul ceiling, XLA cost / memory, RSS, machine."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from typing import Any, Callable

import numpy as np


def median_seconds(step: Callable[[], Any], *, warmup: int, repeats: int) -> dict[str, float]:
    """Median wall time of `step()` (which must block until its result is ready)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats}


def matmul_ceiling(size: int, repeats: int) -> dict[str, float]:
    """FLOP/s of a jitted size^3 matmul: fp32, and bf16 inputs with fp32 accumulation (AMX)."""
    import jax  # noqa: PLC0415  (JAX stays out of the reference's process)
    import jax.numpy as jnp  # noqa: PLC0415
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((size, size), np.float32))
    b = jnp.asarray(rng.standard_normal((size, size), np.float32))
    fp32 = jax.jit(lambda x, y: x @ y)
    bf16 = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    flops = 2.0 * size**3
    out = {"size": size}
    for name, fn, args in (("float32", fp32, (a, b)), ("bfloat16", bf16, (a16, b16))):
        timing = median_seconds(lambda: fn(*args).block_until_ready(), warmup=2, repeats=repeats)
        out[f"{name}_flops_per_s"] = flops / timing["median_s"]
    return out


def xla_stats(compiled) -> dict[str, float]:
    """FLOPs per call and XLA's buffer sizes of a compiled executable."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    stats = {"flops": float(cost.get("flops", float("nan"))),
             "bytes_accessed": float(cost.get("bytes accessed", float("nan")))}
    if memory is not None:
        stats.update(xla_argument_bytes=memory.argument_size_in_bytes,
                     xla_output_bytes=memory.output_size_in_bytes,
                     xla_temp_bytes=memory.temp_size_in_bytes,
                     xla_alias_bytes=memory.alias_size_in_bytes)
        # Live at once: arguments + temporaries + outputs not aliased to (donated) arguments.
        stats["xla_peak_bytes"] = (memory.argument_size_in_bytes + memory.temp_size_in_bytes +
                                   memory.output_size_in_bytes - memory.alias_size_in_bytes)
    return stats


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakRss:
    """Process RSS over a block: VmHWM is reset on entry (Linux clear_refs), read on exit."""

    def __enter__(self) -> "PeakRss":
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:  # not resettable: VmHWM is then the process-lifetime peak
            self.reset = False
        self.start_bytes = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        self.peak_bytes = _status_kib("VmHWM") * 1024

    def result(self) -> dict[str, float]:
        return {"rss_peak_bytes": self.peak_bytes, "rss_start_bytes": self.start_bytes,
                "rss_peak_increase_bytes": self.peak_bytes - self.start_bytes}


def tree_bytes(tree: Any) -> int:
    import jax  # noqa: PLC0415
    return int(sum(np.prod(np.shape(x)) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files)


def machine() -> dict[str, Any]:
    """CPU model and cores (lscpu), accelerators, library versions, date."""
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info.update(cpu_model=fields.get("Model name", "?"), cpus=fields.get("CPU(s)", "?"),
                    threads_per_core=fields.get("Thread(s) per core", "?"),
                    cpu_flags_amx="amx_bf16" in fields.get("Flags", ""))
    except (OSError, subprocess.SubprocessError):
        info["cpu_model"] = platform.processor() or "?"
    import importlib.metadata as md  # noqa: PLC0415
    info["versions"] = {name: md.version(name) for name in (
        "jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers", "peft")}
    return info
