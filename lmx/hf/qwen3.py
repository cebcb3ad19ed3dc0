"""Qwen3 checkpoints: Llama's layout with an RMSNorm over each query / key head before RoPE
(`q_norm`, `k_norm`), optional attention biases and sliding-window layers."""
from __future__ import annotations

from typing import Any

from lmx.hf import llama
from lmx.hf.core import hf_extra_fields, label_fields
from lmx.models.transformer import TransformerConfig

MODEL_TYPES = ("qwen3",)
ARCHITECTURES = llama.architectures("Qwen3")
owns = llama.owns_model_type(MODEL_TYPES)
example_inputs, tensor_map, is_new_for_task = (llama.example_inputs, llama.tensor_map,
                                               llama.is_new_for_task)
read_hook, write_hook = llama.read_hook, llama.write_hook


def config(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    llama.require_silu(hf)
    fields = llama.decoder_fields(hf) | llama.attention_pattern(hf) | dict(
        use_bias=False, qkv_bias=False, qk_norm=True)
    if hf.get("attention_bias"):  # Qwen3's attention_bias covers q, k, v and o, not the MLP
        raise ValueError("config.json attention_bias=True is not supported for qwen3")
    return TransformerConfig(**{**fields, **overrides})


build = llama.builder(config, MODEL_TYPES[0])


def to_hf_config(module) -> dict[str, Any]:
    cfg = module.cfg
    types = llama.hf_layer_types(cfg)
    hf = llama.hf_config_fields(module, MODEL_TYPES[0], ARCHITECTURES) | dict(
        hidden_act="silu", attention_bias=False, layer_types=types,
        use_sliding_window=bool(cfg.layer_types), sliding_window=cfg.sliding_window or None,
        max_window_layers=types.index("sliding_attention") if "local" in cfg.layer_types
        else cfg.num_layers)
    return label_fields(hf | hf_extra_fields(module), module)
