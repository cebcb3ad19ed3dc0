"""Gemma 2 checkpoints: GeGLU (tanh GELU), embeddings times sqrt(D), `(1 + w)` RMSNorms before
and after attention and MLP, attention and final logit soft-capping, alternating local
(sliding-window) / global layers, scores scaled by `query_pre_attn_scalar ** -0.5`."""
from __future__ import annotations

from typing import Any

from lmx.hf import llama
from lmx.hf.core import hf_extra_fields, label_fields
from lmx.models.transformer import TransformerConfig

MODEL_TYPES = ("gemma2",)
ARCHITECTURES = llama.architectures("Gemma2")
owns = llama.owns_model_type(MODEL_TYPES)
example_inputs, tensor_map, is_new_for_task = (llama.example_inputs, llama.tensor_map,
                                               llama.is_new_for_task)
read_hook, write_hook = llama.read_hook, llama.write_hook
_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_tanh")


def gemma_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """The fields Gemma 2 and Gemma 3 share (their RoPE aside)."""
    activation = hf.get("hidden_activation") or hf.get("hidden_act")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"config.json hidden_activation={activation!r} is not supported "
                         f"({_ACTIVATIONS})")
    if hf.get("attention_bias"):
        raise ValueError("config.json attention_bias=True is not supported for Gemma")
    return llama.attention_pattern(hf) | dict(
        mlp="geglu_tanh", use_bias=False, norm_scale_offset=1.0, post_norms=True,
        embed_scale=True, attention_scale=float(hf["query_pre_attn_scalar"]) ** -0.5,
        final_softcap=float(hf.get("final_logit_softcapping") or 0.0),
        tie_embeddings=hf.get("tie_word_embeddings", True))


def gemma_hf_fields(module) -> dict[str, Any]:
    cfg = module.cfg
    scalar = cfg.attention_scale ** -2  # config.json holds an int (head_dim, or D / N)
    return dict(hidden_activation="gelu_pytorch_tanh", attention_bias=False,
                query_pre_attn_scalar=round(scalar) if abs(scalar - round(scalar)) < 1e-6
                else scalar,
                final_logit_softcapping=cfg.final_softcap or None,
                sliding_window=cfg.sliding_window or None,
                layer_types=llama.hf_layer_types(cfg))


def config(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    fields = llama.decoder_fields(hf) | gemma_fields(hf) | dict(
        attention_softcap=float(hf.get("attn_logit_softcapping") or 0.0))
    return TransformerConfig(**{**fields, **overrides})


build = llama.builder(config, MODEL_TYPES[0])


def to_hf_config(module) -> dict[str, Any]:
    hf = llama.hf_config_fields(module, MODEL_TYPES[0], ARCHITECTURES) | gemma_hf_fields(
        module) | dict(attn_logit_softcapping=module.cfg.attention_softcap or None)
    return label_fields(hf | hf_extra_fields(module), module)
