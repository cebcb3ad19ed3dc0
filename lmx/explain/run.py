"""A trained run as something to explain: rebuild model + variables from a workdir (or take
them from a live Trainer), encode inputs, and write RUN/explain/ (HTML, PNGs, JSON).

Axis legend: B batch, T tokens, H/W/C image axes.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from lmx import config as config_lib, peft as peft_lib
from lmx.data import batching
from lmx.explain import target
from lmx.models import families
from lmx.scale import sharding
from lmx.train import build
from lmx.train.step import merge


@dataclasses.dataclass
class Run:
    config: ml_collections.ConfigDict
    module: nn.Module
    variables: dict
    label_names: list[str]
    model_dir: str = ""  # the pretrained folder ("" for a random-init base)

    @property
    def is_text(self) -> bool:
        return families.get(self.config.model.family).inputs == "tokens"

    def base(self) -> tuple[nn.Module, dict] | None:
        """The same weights with PEFT off (module without PEFT, no `peft` collection)."""
        if peft_lib.PEFT not in self.variables:
            return None
        return (self.module.clone(peft=peft_lib.NO_PEFT),
                {k: v for k, v in self.variables.items() if k != peft_lib.PEFT})

    def vocabulary(self) -> list[str] | None:
        return target.read_vocabulary(self.model_dir) if self.model_dir else None

    def tokenizer(self):
        from lmx.hf import pretrained  # noqa: PLC0415
        return pretrained.load_tokenizer(self.model_dir)

    def pad_and_mask_ids(self) -> tuple[int, int]:
        vocabulary = self.vocabulary()
        if vocabulary is None:
            return 0, 0
        index = {w: i for i, w in enumerate(vocabulary)}
        return index.get("[PAD]", 0), index.get("[MASK]", index.get("[UNK]", 0))


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """config.json laid over the schema's defaults (keys added since the run get defaults)."""
    config = config_lib.base_config()
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)

    def lay(node, values):
        for k, v in values.items():
            if isinstance(v, dict) and k in node:
                lay(node[k], v)
            else:
                node[k] = _tupled(v)

    lay(config, saved)
    return config


def load_run(workdir: str) -> Run:
    """Rebuilds the model from config.json and lays RUN/trainable/ (and, for BatchNorm
    models, the latest checkpoint's statistics) over it, on one device."""
    config = read_config(workdir)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    label_names = results["label_names"]
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    built = build.build(config, len(label_names), mesh=mesh,
                        rules=sharding.rules_for(config.sharding),
                        vocab_size=results.get("vocab_size"))  # a from-scratch vocabulary
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, built.state.trainable)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(os.path.abspath(os.path.join(workdir, "trainable")), abstract)
    state = built.state.model_state
    if state:
        state = _latest_model_state(workdir, state)
    return Run(config, built.module, merge(restored, built.frozen, state), label_names,
               built.model.pretrained_dir)


def _latest_model_state(workdir: str, template: dict) -> dict:
    mgr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
    item = mgr.restore(mgr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    return jax.tree.map(lambda t, v: np.asarray(v, t.dtype), template, item["model_state"])


def from_trainer(trainer) -> Run:
    """The live run at the end of `Trainer.fit` (no disk round trip)."""
    variables = merge(trainer.state.trainable, trainer.frozen, trainer.state.model_state)
    return Run(trainer.config, trainer.model.module, jax.device_get(variables),
               list(trainer.datasets["label_names"]), trainer.model.pretrained_dir)


def encode_texts(run: Run, texts: list[str]) -> dict[str, np.ndarray]:
    """Texts -> ids, mask, token_types, candidate; a run without a tokenizer (synthetic data)
    reads each text as space-separated token ids."""
    if run.model_dir:
        batch = run.tokenizer().encode_batch(texts, run.config.data.max_length)
    else:
        rows = [[int(t) for t in text.split()] for text in texts]
        T = max(len(r) for r in rows)
        batch = {"ids": np.zeros((len(rows), T), np.int32), "mask": np.zeros((len(rows), T), bool),
                 "token_types": np.zeros((len(rows), T), np.int32)}
        for b, row in enumerate(rows):
            batch["ids"][b, :len(row)], batch["mask"][b, :len(row)] = row, True
    batch["candidate"] = target.candidates(batch["ids"], batch["mask"], run.vocabulary())
    return batch


def token_strings(run: Run, ids_T: np.ndarray) -> list[str]:
    vocabulary = run.vocabulary()
    return [vocabulary[i] if vocabulary else str(int(i)) for i in ids_T]


def validation_inputs(trainer, num_examples: int) -> dict[str, Any]:
    """The first `num_examples` validation examples as one padded batch (or images)."""
    examples = trainer.datasets["validation"]
    index = np.arange(min(num_examples, len(examples)))
    batch = batching.pad_batch([examples[int(i)] for i in index], len(index),
                               pad_id=trainer.datasets["pad_id"], pad_multiple=1)
    if "images" in batch:
        return batch
    vocabulary = target.read_vocabulary(trainer.model.pretrained_dir) if (
        trainer.model.pretrained_dir) else None
    batch["candidate"] = target.candidates(batch["ids"], batch["mask"], vocabulary)
    return batch
