"""Gemma 3 (text) checkpoints: Gemma 2's layout (gemma2.py) plus `(1 + w)` RMSNorms over each
query / key head, its own local / global layer pattern (5:1 by default) and a separate RoPE
base for local layers; no attention soft-capping (transformers' Gemma3Attention ignores
`attn_logit_softcapping`, so lmx does too)."""
from __future__ import annotations

from typing import Any

from lmx.hf import gemma2, llama
from lmx.hf.core import hf_extra_fields, label_fields
from lmx.models.transformer import TransformerConfig

MODEL_TYPES = ("gemma3_text",)
ARCHITECTURES = {"hidden": "Gemma3TextModel", "causal_lm": "Gemma3ForCausalLM",
                 "sequence_classification": "Gemma3TextForSequenceClassification"}
owns = llama.owns_model_type(MODEL_TYPES)
example_inputs, tensor_map, is_new_for_task = (llama.example_inputs, llama.tensor_map,
                                               llama.is_new_for_task)
read_hook, write_hook = llama.read_hook, llama.write_hook


def rope_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """Global (theta, scaling) and local theta from `rope_parameters` keyed by layer type
    (transformers v5) or v4's `rope_theta` / `rope_scaling` / `rope_local_base_freq`."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params:
        theta, scaling = llama.rope_parameters({"rope_parameters": params["full_attention"]})
        local = dict(params.get("sliding_attention") or {})
        local_theta = float(local.pop("rope_theta", 10000.0))
    else:
        theta, scaling = llama.rope_parameters({"rope_theta": 1e6, **hf})
        local, local_theta = {}, float(hf.get("rope_local_base_freq", 10000.0))
    if local.get("rope_type", "default") != "default" or set(local) - {"rope_type"}:
        raise ValueError(f"config.json rope_parameters.sliding_attention={local!r}: only "
                         "default RoPE is supported for local layers")
    return dict(rope_theta=theta, rope_scaling=scaling, rope_local_theta=local_theta)


def config(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    if hf.get("use_bidirectional_attention"):
        raise ValueError("config.json use_bidirectional_attention=True is not supported")
    hf_flat = {**hf, "rope_parameters": None, "rope_scaling": None}
    fields = (llama.decoder_fields(hf_flat) | gemma2.gemma_fields(hf) | rope_fields(hf)
              | dict(qk_norm=True))
    return TransformerConfig(**{**fields, **overrides})


build = llama.builder(config, MODEL_TYPES[0])


def to_hf_config(module) -> dict[str, Any]:
    cfg = module.cfg
    if cfg.attention_softcap:
        raise ValueError("Gemma 3 has no attention soft-capping (attention_softcap must be 0)")
    hf = llama.hf_config_fields(module, MODEL_TYPES[0], ARCHITECTURES) | gemma2.gemma_hf_fields(
        module)
    hf["rope_parameters"] = {
        "full_attention": hf["rope_parameters"],
        "sliding_attention": {"rope_type": "default",
                              "rope_theta": cfg.rope_local_theta or cfg.rope_theta}}
    return label_fields(hf | hf_extra_fields(module), module)
