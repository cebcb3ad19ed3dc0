"""lmx: pre-train, adapt (full, prompt, PEFT) and explain large pre-trained models in JAX.

The names a library user needs, loaded on first use (importing `lmx` stays cheap and pulls
no sub-package in):

  lmx.base_config(), lmx.validate(config, num_devices)   the one config schema
  lmx.build(config, num_labels, mesh=, rules=)           model + split + optimizer + state
  lmx.run(config, workdir)                               the launcher's training loop
  lmx.hf.from_pretrained(name, task=, num_labels=)       a HF folder / package / hub id
  lmx.hf.load_tokenizer(name)
  lmx.PeftSpec                                            what PEFT a module builds
  lmx.trainable_labels(variables, patterns)              train / freeze per leaf
  lmx.split(variables, labels), lmx.merge(*trees)        trainable / frozen parts
  lmx.make_optimizer(train_config, labels, total_steps)  frozen leaves get no state
  lmx.TrainState, lmx.train_step, lmx.eval_step          the pure steps
  lmx.make_mesh(config.mesh), lmx.rules_for(preset)      sharding
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "base_config": "lmx.config", "validate": "lmx.config",
    "build": "lmx.train.build", "Built": "lmx.train.build", "count": "lmx.train.build",
    "run": "lmx.train.loop",
    "PeftSpec": "lmx.peft",
    "trainable_labels": "lmx.train.optim", "make_optimizer": "lmx.train.optim",
    "split": "lmx.train.step", "merge": "lmx.train.step", "TrainState": "lmx.train.step",
    "train_step": "lmx.train.step", "eval_step": "lmx.train.step",
    "make_mesh": "lmx.scale.sharding", "rules_for": "lmx.scale.sharding",
}
_SUBPACKAGES = ("config", "data", "explain", "hf", "models", "peft", "scale", "tasks", "train")

__all__ = sorted(_EXPORTS) + list(_SUBPACKAGES)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"lmx.{name}")
    raise AttributeError(f"module 'lmx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
