"""One side of the bench in its own process: `python -m bench.worker lmx|torch`.

Each side runs in its own process because an XLA CPU client in the same process slows torch's
CPU kernels several-fold (measured: bert-tiny step 0.21 s alone, 1.31 s after one jitted
matmul), and so each side's peak RSS is its own. The parent sends one JSON request per line
on stdin and reads one JSON reply per line from this process's original stdout; everything
the libraries print goes to stderr.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import traceback

from bench import workloads


def _raw_step(module, suite: str, workload: str, **kwargs) -> dict:
    s = workloads.get_suite(suite)
    w = workloads.get_workload(s, workload)
    return {**module.raw_step(w, s, batch=workloads.make_batch(w), **kwargs), "pid": os.getpid()}


def _end_to_end(module, suite: str, **kwargs) -> dict:
    return module.end_to_end(workloads.get_suite(suite), **kwargs)


def _compile_seconds(module, scan: bool, suite: str) -> dict:
    s = workloads.get_suite(suite)
    return module.compile_seconds(s.compile_size, s.compile_layers, scan,
                                  workloads.make_batch(s.workloads[0]))


def _handlers(side: str) -> dict:
    if side == "lmx":
        import jax  # noqa: PLC0415

        from bench import (
            lmx_side as m,  # noqa: PLC0415
            measure,
        )
        return {"raw_step": functools.partial(_raw_step, m),
                "end_to_end": functools.partial(_end_to_end, m),
                "compile_seconds": functools.partial(_compile_seconds, m),
                "ceiling": measure.matmul_ceiling,
                "devices": lambda: [str(d) for d in jax.devices()]}
    from bench import torch_side as t  # noqa: PLC0415
    return {"raw_step": functools.partial(_raw_step, t),
            "end_to_end": functools.partial(_end_to_end, t),
            "make_tiny_bert": t.make_tiny_bert, "threads": t.torch.get_num_threads}


def main(side: str) -> None:
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # library prints (progress bars, load reports) go to stderr
    sys.stdout = sys.stderr
    handlers = _handlers(side)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            out = {"ok": handlers[request["fn"]](**request.get("kwargs", {}))}
        except Exception:  # noqa: BLE001  (the parent re-raises it with the traceback)
            out = {"error": traceback.format_exc()}
        reply.write(json.dumps(out) + "\n")
        reply.flush()


if __name__ == "__main__":
    main(sys.argv[1])
