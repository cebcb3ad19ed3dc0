"""Qwen2 / Qwen2.5 checkpoints: Llama's layout with query / key / value biases (no output or
MLP biases) and optional sliding-window layers (`use_sliding_window`, `layer_types`)."""
from __future__ import annotations

from typing import Any

from lmx.hf import llama
from lmx.hf.core import HFTransformer, hf_extra_fields, label_fields, transformer_module
from lmx.models.transformer import TransformerConfig

MODEL_TYPES = ("qwen2",)
ARCHITECTURES = {"hidden": "Qwen2Model", "causal_lm": "Qwen2ForCausalLM",
                 "sequence_classification": "Qwen2ForSequenceClassification",
                 "token_classification": "Qwen2ForTokenClassification"}
owns = llama.owns_model_type(MODEL_TYPES)
example_inputs, tensor_map, is_new_for_task = (llama.example_inputs, llama.tensor_map,
                                               llama.is_new_for_task)
read_hook, write_hook = llama.read_hook, llama.write_hook


def config(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r} is not supported (silu)")
    fields = llama.decoder_fields(hf) | llama.attention_pattern(hf) | dict(
        use_bias=False, qkv_bias=True)
    return TransformerConfig(**{**fields, **overrides})


def build(hf: dict[str, Any], task: str, num_labels: int | None, peft_spec=None,
          **overrides: Any) -> HFTransformer:
    return transformer_module(config(hf, **overrides), hf, task, num_labels, peft_spec,
                              MODEL_TYPES[0], "last")


def to_hf_config(module) -> dict[str, Any]:
    cfg = module.cfg
    hf = llama.hf_config_fields(module, MODEL_TYPES[0], ARCHITECTURES) | dict(
        hidden_act="silu", layer_types=llama.hf_layer_types(cfg),
        use_sliding_window=bool(cfg.layer_types), sliding_window=cfg.sliding_window or None,
        max_window_layers=llama.hf_layer_types(cfg).index("sliding_attention")
        if "local" in cfg.layer_types else cfg.num_layers)
    return label_fields(hf | hf_extra_fields(module), module)
