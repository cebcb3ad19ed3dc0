"""From config to a model and its variables: born sharded, pretrained weights laid over init."""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from lmx import peft as peft_lib
from lmx.models import resnet, transformer
from lmx.scale import sharding

# Top-level param names a pretrained checkpoint need not have (initialised fresh, logged):
# the task head, and BERT's pooler (absent from checkpoints pre-trained without NSP).
NEW_FOR_TASK = ("head", "pooler")


@dataclasses.dataclass
class Model:
    module: nn.Module
    variables: Any  # unboxed, sharded: {"params", "peft"?, "batch_stats"?}
    shardings: Any  # NamedShardings, same tree as variables
    abstract: Any  # shapes boxed with logical axis names (for deriving optimizer shardings)
    pretrained_dir: str = ""


def _arch_config(config: ml_collections.ConfigDict, num_labels: int,
                 vocab_size: int | None = None):
    """The family config (and the HF folder / params when `model.pretrained` is set).

    `vocab_size`: a model trained from scratch takes its tokenizer's vocabulary."""
    m = config.model
    overrides = dict(dtype=m.dtype)
    if m.family == "transformer":
        overrides.update(dropout_rate=m.dropout_rate, attention_dropout_rate=m.attention_dropout_rate,
                         use_pooler=m.pooling == "cls")
        if m.pretrained:  # any family lmx.hf reads: BERT, RoBERTa, DistilBERT, GPT-2, Llama
            import lmx.hf  # noqa: PLC0415  (safetensors only needed here)
            from lmx.hf import pretrained  # noqa: PLC0415
            model_dir = pretrained.resolve_model_dir(m.pretrained)
            module, variables = lmx.hf.from_pretrained(
                model_dir, task=m.task, num_labels=num_labels, fresh_heads=False, **overrides)
            if not isinstance(module, transformer.Transformer):
                raise ValueError(f"config.model.pretrained={m.pretrained!r} is a "
                                 f"{type(module).__name__}, not a transformer")
            if m.random_init:  # the same architecture and tokenizer, fresh weights
                return module.cfg, None, str(model_dir)
            return module.cfg, {"params": variables["params"]}, str(model_dir)
        if vocab_size is not None:
            overrides["vocab_size"] = vocab_size
        return transformer.size(m.size, **overrides), None, ""
    if m.family == "resnet":
        if m.pretrained:  # a HF ResNetForImageClassification folder (e.g. an lmx export)
            import lmx.hf  # noqa: PLC0415
            from lmx.hf import pretrained  # noqa: PLC0415
            model_dir = pretrained.resolve_model_dir(m.pretrained)
            module, variables = lmx.hf.from_pretrained(
                model_dir, task="image_classification", num_labels=num_labels,
                fresh_heads=False, **overrides)
            if not isinstance(module, resnet.ResNet):
                raise ValueError(f"config.model.pretrained={m.pretrained!r} is a "
                                 f"{type(module).__name__}, not a ResNet")
            if m.random_init:
                return module.cfg, None, str(model_dir)
            return module.cfg, variables, str(model_dir)
        return resnet.size(m.size, **overrides), None, ""
    raise ValueError(f"config.model.family={m.family!r} is not 'transformer' or 'resnet'")


def _module(config, cfg, num_labels: int, spec: peft_lib.PeftSpec) -> nn.Module:
    if config.model.family == "resnet":
        return resnet.ResNet(cfg, num_labels=num_labels, peft=spec)
    return transformer.Transformer(cfg, task=config.model.task, num_labels=num_labels,
                                   pooling=config.model.pooling, peft=spec)


def dummy_inputs(config: ml_collections.ConfigDict) -> tuple:
    if config.model.family == "resnet":
        size = config.model.image_size
        return (jnp.zeros((1, size, size, 3), jnp.float32),)
    return (jnp.zeros((1, 8), jnp.int32),)


def _overlay(variables: dict, shardings: dict, loaded: dict, source: str) -> dict:
    """Replaces init variables by pretrained ones (params, and ResNet's batch_stats); missing
    base variables and bad shapes are errors."""
    for collection in loaded:
        variables = _overlay_collection(variables, shardings, loaded[collection], source,
                                        collection)
    return variables


def _overlay_collection(variables: dict, shardings: dict, loaded: dict, source: str,
                        collection: str) -> dict:
    flat = traverse_util.flatten_dict(variables[collection])
    flat_sh = traverse_util.flatten_dict(shardings[collection])
    flat_loaded = traverse_util.flatten_dict(loaded)
    missing = [k for k in flat if k not in flat_loaded and k[0] not in NEW_FOR_TASK]
    mismatched = [f"{'/'.join(k)}: model {flat[k].shape} vs checkpoint {np.shape(v)}"
                  for k, v in flat_loaded.items() if k in flat and flat[k].shape != np.shape(v)]
    if missing or mismatched:
        raise ValueError(f"{source}: cannot load pretrained weights.\n  missing: "
                         f"{['/'.join(k) for k in missing]}\n  shape mismatch: {mismatched}")
    fresh = sorted("/".join(k) for k in flat if k not in flat_loaded)
    if fresh:
        logging.warning("%s: %d parameters initialised fresh (not in the checkpoint): %s",
                        source, len(fresh), fresh)
    unused = sorted("/".join(k) for k in flat_loaded if k not in flat)
    if unused:
        logging.warning("%s: %d pretrained tensors unused by this task: %s", source,
                        len(unused), unused)
    for k, v in flat_loaded.items():
        if k in flat:
            flat[k] = jax.device_put(np.asarray(v, flat[k].dtype), flat_sh[k])
    return {**variables, collection: traverse_util.unflatten_dict(flat)}


def _check_length(config: ml_collections.ConfigDict, cfg) -> None:
    """Learned position tables end at max_len: a longer (padded) batch would read past it."""
    if config.model.family != "transformer" or cfg.positions != "learned":
        return
    d = config.data
    padded = -(-d.max_length // d.pad_multiple) * d.pad_multiple
    if padded + cfg.position_offset > cfg.max_len:
        raise ValueError(
            f"config.data.max_length={d.max_length} (padded to a multiple of "
            f"data.pad_multiple={d.pad_multiple}: {padded}) exceeds the model's "
            f"{cfg.max_len - cfg.position_offset} learned positions; lower max_length or "
            "pad_multiple")


def create(config: ml_collections.ConfigDict, num_labels: int, mesh, rules,
           rng: jax.Array, vocab_size: int | None = None) -> Model:
    """Builds the model named by `config.model` / `config.peft` with sharded variables."""
    cfg, loaded, model_dir = _arch_config(config, num_labels, vocab_size)
    _check_length(config, cfg)
    inputs = dummy_inputs(config)
    base = _module(config, cfg, num_labels, peft_lib.NO_PEFT)
    base_shapes = jax.eval_shape(lambda: nn.unbox(base.init(jax.random.key(0), *inputs)))
    spec = peft_lib.spec_from_config(config.peft, {"params": base_shapes["params"]})
    module = _module(config, cfg, num_labels, spec)

    def init(key):
        return module.init({"params": key, "dropout": key}, *inputs)

    abstract = jax.eval_shape(init, rng)
    specs = nn.get_partition_spec(abstract)
    shardings = sharding.logical_to_shardings(specs, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        variables = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(rng)
    variables = flax.core.unfreeze(variables)
    if loaded is not None:
        variables = _overlay(variables, shardings, loaded, model_dir)
    return Model(module, variables, flax.core.unfreeze(shardings), flax.core.unfreeze(abstract),
                 model_dir)


def count(tree: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def nbytes(tree: Any) -> int:
    return int(sum(np.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))
