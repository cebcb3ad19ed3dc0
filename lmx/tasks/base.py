"""What differs between tasks: reading each split, batching it, what the jitted eval step
returns and how the collected outputs become scores. `loop.Trainer` holds one task.

A task answers:
  load(config, workdir) -> Datasets      every split read, tokenized once
  steps_per_epoch(split, batch_size)
  train_batches(split, start_step)       endless, a pure function of (seed, step): exact resume
                                         (rows=: one process's rows, data.host_input)
  eval_batches(split)                    -> (device batch, host-only info) pairs
  outputs(logits, batch)                 traced inside the jitted eval step
  scores(split, collected)               -> {"metric": value}
  generated_scores(trainer, split)       scores that generate with the model (chat SFT)
  finish(trainer, workdir)               task extras at the end of a run (sample, export)

Every batch has `ids`, `mask`, `token_types`, `labels` and `weights` (or `images`);
`labels` < 0 carry no loss, `weights` (B,) zero out filler rows. The loss is the same
cross-entropy for every task (`train.classification_loss`).

Axis legend: B batch, T length, V vocabulary, N examples.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import jax
import ml_collections

from lmx.data import batching, transforms

IGNORE = transforms.IGNORE
MASK_TOKENS = ("[MASK]", "<mask>")  # WordPiece's, lmx.data.tokenizer's sentencepiece models'


@dataclasses.dataclass
class Datasets:
    train: Any
    validation: Any
    test: Any  # None when no test file is configured
    label_names: list[str]
    pad_id: int
    vocab_size: int | None = None  # models from scratch take the tokenizer's vocabulary
    tokenizer: Any = None


class Task:
    """Defaults shared by the tasks; `bind` keeps what batching and scoring need. Training and
    eval batches default to the one batcher, `lmx.data.batching`."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.pad_id, self.label_names = 0, []

    plot_metrics: tuple[str, ...] = ()  # validation scores in [0, 1] worth a curve
    packable = False  # data.pack_length packs its training examples (config refuses others)

    def bind(self, datasets: Datasets) -> None:
        self.pad_id, self.label_names = datasets.pad_id, datasets.label_names

    def _pack_length(self) -> int:
        return self.config.data.pack_length if self.packable else 0

    def steps_per_epoch(self, split, batch_size: int) -> int:
        return batching.steps_per_epoch(split, batch_size, pack_length=self._pack_length(),
                                        whole_examples=True)

    def train_batches(self, split, start_step: int, rows: slice | None = None
                      ) -> Iterator[dict]:
        """`rows`: only this process's rows of each global batch (data.host_input)."""
        return self.bucketed_batches(split, start_step, rows=rows)

    def bucketed_batches(self, split, start_step: int, transform=None,
                         rows: slice | None = None) -> Iterator[dict]:
        """The one batcher (`lmx.data.batching.train_batches`) with this run's settings."""
        c = self.config
        return batching.train_batches(split, c.train.batch_size, seed=c.seed,
                                      start_step=start_step, pad_id=self.pad_id,
                                      pad_multiple=c.data.pad_multiple,
                                      bucket_batches=c.data.bucket_batches, transform=transform,
                                      pack_length=self._pack_length(), whole_examples=True,
                                      rows=rows)

    def eval_batches(self, split) -> Iterator[tuple[dict, dict]]:
        return eval_token_batches(self, split)

    @staticmethod
    def outputs(logits: jax.Array, batch: dict) -> dict:
        """Per-batch outputs beyond the loss sums (traced in the eval step)."""
        return {}

    def generated_scores(self, trainer, split) -> dict[str, float]:
        """Scores that need the model outside the jitted eval step (generation); merged into
        every evaluation's scores."""
        return {}

    def finish(self, trainer, workdir: str) -> dict:
        return {}


def export_hf(trainer, workdir: str, variables: dict, collections=("params",)) -> str:
    """Saves the trained model as a HF folder WORKDIR/hf that `model.pretrained` reads."""
    import lmx.hf  # noqa: PLC0415
    out = os.path.join(workdir, "hf")
    lmx.hf.save_pretrained(trainer.model.module, {k: variables[k] for k in collections}, out)
    return out


def eval_token_batches(task: Task, split) -> Iterator[tuple[dict, dict]]:
    """Every example once (`lmx.data.batching.eval_batches`); host info: `index` (the example
    of each row, -1 for filler) and `labels`."""
    c = task.config
    for batch, index_B in batching.eval_batches(split, c.train.eval_batch_size,
                                                pad_id=task.pad_id,
                                                pad_multiple=c.data.pad_multiple):
        yield batch, {"index": index_B, "labels": batch["labels"]}
