"""Launcher: `python -m lmx.main --config experiments/NAME.py[:ARGS] --workdir DIR [--config.k=v]`.

On several hosts run the same command on every host; `jax.distributed` starts from the
flags below or from the environment (Cloud TPU, SLURM, JAX_COORDINATOR_ADDRESS).
"""
import json

from absl import app, flags, logging
from ml_collections import config_flags

from lmx.scale import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs and checkpoints go.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process, 0..num_processes-1.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    # Before anything touches a device.
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _CONFIG.value.model.task == "cloze":  # the prompt-learning sweep (one device)
        from lmx.tasks import prompting  # noqa: PLC0415
        from lmx.train import prompt_sweep  # noqa: PLC0415
        print(prompting.format_table(prompt_sweep.run(_CONFIG.value, _WORKDIR.value)))
        return
    from lmx.train import loop  # noqa: PLC0415
    results = loop.run(_CONFIG.value, _WORKDIR.value)
    summary = {k: results[k] for k in ("preempted", "step", "validation", "test",
                                       "trainable_percent", "examples_per_second",
                                       "train_seconds") if k in results}
    if distributed.is_lead():
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
