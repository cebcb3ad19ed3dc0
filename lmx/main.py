"""Launcher: `python -m lmx.main --config experiments/NAME.py[:ARGS] --workdir DIR [--config.k=v]`."""
import json

from absl import app, flags, logging
from ml_collections import config_flags

from lmx import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs and checkpoints go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    results = loop.run(_CONFIG.value, _WORKDIR.value)
    summary = {k: results[k] for k in ("validation", "test", "trainable_percent",
                                       "examples_per_second", "train_seconds") if k in results}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
