"""What differs between tasks: reading each split, batching it, what the jitted eval step
returns and how the collected outputs become scores. `loop.Trainer` holds one task.

A task answers:
  load(config, workdir) -> Datasets      every split read, tokenized once
  steps_per_epoch(split, batch_size)
  train_batches(split, start_step)       endless, a pure function of (seed, step): exact resume
  eval_batches(split)                    -> (device batch, host-only info) pairs
  outputs(logits, batch)                 traced inside the jitted eval step
  scores(split, collected)               -> {"metric": value}
  finish(trainer, workdir)               task extras at the end of a run (sample, export)

Every batch has `ids`, `mask`, `token_types`, `labels` and `weights` (or `images`);
`labels` < 0 carry no loss, `weights` (B,) zero out filler rows. The loss is the same
cross-entropy for every task (`train.classification_loss`).

Axis legend: B batch, T length, V vocabulary, N examples.
"""
from __future__ import annotations

import ml_collections

from lmx.models import families

from lmx.tasks import recsys
from lmx.tasks.base import IGNORE, MASK_TOKENS, Datasets, Task, eval_token_batches, export_hf
from lmx.tasks.classification import SequenceClassification
from lmx.tasks.language_model import CausalLM, MaskedLM
from lmx.tasks.tokens import TokenClassification

__all__ = ["IGNORE", "MASK_TOKENS", "Datasets", "Task", "eval_token_batches", "export_hf",
           "SequenceClassification", "TokenClassification", "CausalLM", "MaskedLM", "get"]

TASKS = {"sequence_classification": SequenceClassification,
         "token_classification": TokenClassification, "causal_lm": CausalLM, "mlm": MaskedLM}


def get(config: ml_collections.ConfigDict):
    """The task object for `config.model.task` (ResNet: sequence classification of images)."""
    images = families.get(config.model.family).inputs == "images"
    task = "sequence_classification" if images else config.model.task
    if task == "mlm" and config.data.kind == "movielens":
        return recsys.NextItem(config)
    return TASKS[task](config)
