"""The model-family registry: one entry per family, chosen by `config.model.family`.

Everything that differs between families and that the builder, the train step, the AOT
check or the config schema must know is here, once: the size table, how to construct the
module, a dummy input for `init`, how a batch is fed to `apply`, and which config keys the
family reads. Nothing else in lmx branches on a family's name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmx.models import resnet, transformer, vit
from lmx.peft import PeftSpec


@dataclasses.dataclass(frozen=True)
class Family:
    """What the rest of lmx needs to know about one model family.

    Attributes:
      name: the value of `config.model.family`.
      module_class: the Flax module the family builds (a pretrained folder must yield one).
      sizes: the family's size table (`config.model.size` picks a key).
      size: `size(name, **overrides) -> cfg`.
      make: `make(cfg, task, num_labels, pooling, spec) -> module`.
      inputs: "tokens" (ids / mask / token_types) or "images" (B, H, W, C pixels).
      forward: `forward(module, variables, batch, train, rngs) -> (logits, updated collections)`.
      hf_task: the task `lmx.hf.from_pretrained` builds for a classifier of this family (None:
        the run's `model.task`).
      reads: config keys of `config.model` that only some families read; another family
        refuses them when set to a non-default value.
      refuses: PEFT it cannot build, `config.peft.method` or "quantize_base" -> why
        (`lmx.config.validate` names it; the README's PEFT compatibility matrix quotes it).
    """
    name: str
    module_class: type
    sizes: dict
    size: Callable[..., Any]
    make: Callable[..., nn.Module]
    inputs: str
    forward: Callable[..., tuple[jax.Array, dict]]
    hf_task: str | None
    reads: tuple[str, ...]
    overrides: Callable[[Any], dict]
    refuses: dict[str, str] = dataclasses.field(default_factory=dict)

    def config(self, model_config, vocab_size: int | None = None):
        """The architecture for `config.model` from the size table (no pretrained folder)."""
        extra = {"vocab_size": vocab_size} if vocab_size is not None and self.inputs == "tokens" \
            else {}
        return self.size(model_config.size, **self.overrides(model_config), **extra)

    def dummy_inputs(self, image_size: int) -> tuple:
        if self.inputs == "images":
            return (jnp.zeros((1, image_size, image_size, 3), jnp.float32),)
        return (jnp.zeros((1, 8), jnp.int32),)


def _forward_tokens(module, variables, batch, train: bool, rngs: dict):
    # packed rows (lmx.data.batching's packing) carry `positions` and `segment_ids`
    logits = module.apply(variables, batch["ids"], batch["mask"], batch["token_types"],
                          batch.get("positions"), deterministic=not train, rngs=rngs,
                          targets_BM=batch.get("targets"), segment_ids_BT=batch.get("segment_ids"))
    return logits, {}


def _forward_resnet(module, variables, batch, train: bool, rngs: dict):
    if train:  # BatchNorm statistics are updated in training
        return module.apply(variables, batch["images"], train=True, mutable=["batch_stats"],
                            rngs=rngs)
    return module.apply(variables, batch["images"], train=False), {}


def _forward_vit(module, variables, batch, train: bool, rngs: dict):
    return module.apply(variables, batch["images"], deterministic=not train, rngs=rngs), {}


def _make_transformer(cfg, task: str, num_labels: int, pooling: str, spec: PeftSpec):
    return transformer.Transformer(cfg, task=task, num_labels=num_labels, pooling=pooling,
                                   peft=spec)


def _make_resnet(cfg, task: str, num_labels: int, pooling: str, spec: PeftSpec):
    return resnet.ResNet(cfg, num_labels=num_labels, peft=spec)


def _make_vit(cfg, task: str, num_labels: int, pooling: str, spec: PeftSpec):
    return vit.ViT(cfg, task="image_classification", num_labels=num_labels, peft=spec)


def _transformer_overrides(m) -> dict:
    return dict(dtype=m.dtype, dropout_rate=m.dropout_rate,
                attention_dropout_rate=m.attention_dropout_rate, use_pooler=m.pooling == "cls",
                scan_layers=m.scan_layers, remat=m.remat, attention=m.attention,
                kv_cache_dtype=m.kv_cache_dtype)


def _vit_overrides(m) -> dict:
    return dict(dtype=m.dtype, dropout_rate=m.dropout_rate,
                attention_dropout_rate=m.attention_dropout_rate, image_size=m.image_size)


FAMILIES: dict[str, Family] = {
    "transformer": Family("transformer", transformer.Transformer, transformer.SIZES,
                          transformer.size, _make_transformer, "tokens", _forward_tokens,
                          hf_task=None,
                          reads=("pooling", "task", "scan_layers", "remat", "attention",
                                 "dropout_rate", "attention_dropout_rate", "kv_cache_dtype"),
                          overrides=_transformer_overrides),
    "resnet": Family("resnet", resnet.ResNet, resnet.SIZES, resnet.size, _make_resnet,
                     "images", _forward_resnet, hf_task="image_classification",
                     reads=("image_size",), overrides=lambda m: dict(dtype=m.dtype),
                     refuses={"prompt": "a CNN has no token sequence to prepend a prompt to",
                              "prefix": "a CNN has no attention layers to prefix",
                              "ia3": "IA3 scales Dense layers only; a CNN's are convolutions",
                              "quantize_base": "QLoRA quantizes Dense kernels only; a CNN's "
                                               "are convolutions"}),
    "vit": Family("vit", vit.ViT, vit.SIZES, vit.size, _make_vit, "images", _forward_vit,
                  hf_task="image_classification",
                  reads=("image_size", "dropout_rate", "attention_dropout_rate"),
                  overrides=_vit_overrides,
                  refuses={"prompt": "ViT's inputs are image patches with learned positions "
                                     "for a fixed patch count: no soft prompt"}),
}


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"config.model.family={name!r} is not one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def of_module(module: nn.Module) -> Family:
    """The family of a built module (the train step is handed modules, not configs)."""
    for family in FAMILIES.values():
        if isinstance(module, family.module_class):
            return family
    raise ValueError(f"{type(module).__name__} belongs to no family of lmx.models.families")
