"""The task registry: `get(config)` -> the Task for `config.model.task` (the contract is in
lmx/tasks/base.py; one file per task kind)."""
from __future__ import annotations

import ml_collections

from lmx.models import families
from lmx.tasks import recsys
from lmx.tasks.chat import ChatSFT
from lmx.tasks.base import IGNORE, MASK_TOKENS, Datasets, Task, eval_token_batches, export_hf
from lmx.tasks.classification import SequenceClassification
from lmx.tasks.language_model import CausalLM, MaskedLM
from lmx.tasks.tokens import TokenClassification

__all__ = ["IGNORE", "MASK_TOKENS", "Datasets", "Task", "eval_token_batches", "export_hf",
           "SequenceClassification", "TokenClassification", "CausalLM", "MaskedLM", "ChatSFT", "get"]

TASKS = {"sequence_classification": SequenceClassification,
         "token_classification": TokenClassification, "causal_lm": CausalLM, "mlm": MaskedLM,
         "chat_sft": ChatSFT}


def get(config: ml_collections.ConfigDict):
    """The task object for `config.model.task` (ResNet: sequence classification of images)."""
    images = families.get(config.model.family).inputs == "images"
    task = "sequence_classification" if images else config.model.task
    if task == "mlm" and config.data.kind == "movielens":
        return recsys.NextItem(config)
    return TASKS[task](config)
