"""Mistral checkpoints: Llama's layout where every layer attends within `sliding_window`
slots when the config sets one (transformers' MistralModel)."""
from __future__ import annotations

from typing import Any

from lmx.hf import llama
from lmx.hf.core import hf_extra_fields, label_fields
from lmx.models.transformer import TransformerConfig

MODEL_TYPES = ("mistral",)
ARCHITECTURES = llama.architectures("Mistral")
owns = llama.owns_model_type(MODEL_TYPES)
example_inputs, tensor_map, is_new_for_task = (llama.example_inputs, llama.tensor_map,
                                               llama.is_new_for_task)
read_hook, write_hook = llama.read_hook, llama.write_hook


def config(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    llama.require_silu(hf)
    fields = llama.decoder_fields(hf) | llama.attention_pattern(hf, all_sliding=True) | dict(
        use_bias=False)
    return TransformerConfig(**{**fields, **overrides})


build = llama.builder(config, MODEL_TYPES[0])


def to_hf_config(module) -> dict[str, Any]:
    cfg = module.cfg
    if cfg.layer_types and len(set(cfg.layer_types)) > 1:
        raise ValueError("a Mistral config.json cannot mix local and global layers")
    hf = llama.hf_config_fields(module, MODEL_TYPES[0], ARCHITECTURES) | dict(
        hidden_act="silu", sliding_window=cfg.sliding_window or None)
    return label_fields(hf | hf_extra_fields(module), module)
