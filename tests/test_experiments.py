"""Every experiment config builds and runs two training steps under `runlocal` (the second
fits the first step's batch better)."""
import glob
import importlib.util
import itertools
import json
import os

import numpy as np
import pytest

import shared_data
from lmx import tasks
from lmx.models import families
from lmx.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _get_config(path, arg):
    return _module(path).get_config(arg)


# Experiments the trainer runs (model.task "cloze", prompt_sst2.py, is lmx.main's prompt sweep,
# not the training loop: tests/test_prompting.py runs it).
EXPERIMENTS = [p for p in sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))
               if _get_config(p, "runlocal").model.task != "cloze"]


def test_there_are_experiments():
    assert any(p.endswith("banking77_lora.py") for p in EXPERIMENTS)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_runlocal_runs_and_its_second_step_fits_the_batch_better(path, tmp_path, monkeypatch):
    """Two steps on the same first batch, dropout off: the second step's loss (after one
    update on that batch) is below the first's. A step that changes nothing the loss reads
    leaves it exactly equal (with dropout on, a no-update run's loss moved by up to 0.016,
    more than tiny_synthetic's whole first-step drop, 0.00024)."""
    config = _get_config(path, "runlocal")
    missing = [f for f in (config.data.train_file, config.data.validation_file,
                           config.data.test_file) if f and not os.path.exists(f)]
    shared_data.require(*missing)  # ../shared/data is not in the repository
    config.train.num_steps, config.train.log_every = 2, 1
    for key in ("dropout_rate", "attention_dropout_rate"):  # only where the family reads it
        if key in families.FAMILIES[config.model.family].reads:
            config.model[key] = 0.0
    config.peft.lora.dropout = 0.0
    config.train.eval_batch_size = 64
    config.data.max_eval_examples = 64  # the step is under test, not the full-split score
    stream = loop.Trainer.train_stream
    monkeypatch.setattr(loop.Trainer, "train_stream",
                        lambda self, start: itertools.repeat(next(stream(self, start))))
    results = loop.run(config, str(tmp_path))
    assert results["step"] == 2
    headline = results["headline"]
    assert headline["value"] == results["validation"][headline["name"]]
    assert np.isfinite(headline["value"])
    assert 0 < results["trainable_percent"] <= 100
    tokens = config.model.task == "causal_lm" and config.model.family == "transformer"
    assert results["data"]["validation_examples"] <= 64 * (config.data.max_length + 1 if tokens
                                                           else 1)
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "examples_per_second" in r]
    assert len(losses) == 2 and losses[1] < losses[0], losses


# (full fine-tuning runs through loop.run in tests/test_tasks.py and the runlocal steps above)
@pytest.mark.parametrize("method", ["bitfit", "houlsby", "pfeiffer", "prompt", "prefix", "ia3"])
def test_synthetic_variants_run(method, tmp_path):
    config = _get_config(os.path.join(ROOT, "experiments", "tiny_synthetic.py"),
                         f"runlocal,{method}")
    config.train.num_steps = 2
    assert loop.run(config, str(tmp_path))["step"] == 2


def test_unknown_arg_is_an_error():
    with pytest.raises(ValueError, match="unknown arg 'nope'"):
        _get_config(os.path.join(ROOT, "experiments", "banking77_lora.py"), "nope")


def test_max_train_examples_is_a_labelled_budget(tmp_path):
    """data.max_train_examples keeps the first N training examples: epochs count over them
    and results.json records the budget actually trained on."""
    config = _get_config(os.path.join(ROOT, "experiments", "tiny_synthetic.py"), "runlocal")
    full = len(tasks.get(config).load(config, str(tmp_path / "full")).train)
    config.data.max_train_examples = 40
    config.train.batch_size, config.train.num_steps, config.train.num_epochs = 8, 0, 2.0
    assert full > 40
    results = loop.run(config, str(tmp_path / "budget"))
    assert results["data"]["train_examples"] == 40
    assert results["step"] == 2 * 40 // 8
