"""Qwen2 / Qwen2.5 checkpoints: Llama's layout with query / key / value biases (no output or
MLP biases) and optional sliding-window layers (`use_sliding_window`, `layer_types`)."""
from __future__ import annotations

from typing import Any

from lmx.hf import llama
from lmx.hf.core import hf_extra_fields, label_fields
from lmx.models.transformer import TransformerConfig

MODEL_TYPES = ("qwen2",)
ARCHITECTURES = llama.architectures("Qwen2")
owns = llama.owns_model_type(MODEL_TYPES)
example_inputs, tensor_map, is_new_for_task = (llama.example_inputs, llama.tensor_map,
                                               llama.is_new_for_task)
read_hook, write_hook = llama.read_hook, llama.write_hook


def config(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    llama.require_silu(hf)
    fields = llama.decoder_fields(hf) | llama.attention_pattern(hf) | dict(
        use_bias=False, qkv_bias=True)
    return TransformerConfig(**{**fields, **overrides})


build = llama.builder(config, MODEL_TYPES[0])


def to_hf_config(module) -> dict[str, Any]:
    cfg = module.cfg
    hf = llama.hf_config_fields(module, MODEL_TYPES[0], ARCHITECTURES) | dict(
        hidden_act="silu", layer_types=llama.hf_layer_types(cfg),
        use_sliding_window=bool(cfg.layer_types), sliding_window=cfg.sliding_window or None,
        max_window_layers=llama.hf_layer_types(cfg).index("sliding_attention")
        if "local" in cfg.layer_types else cfg.num_layers)
    return label_fields(hf | hf_extra_fields(module), module)
