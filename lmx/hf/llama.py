"""Llama checkpoints <-> lmx.models.transformer.Transformer (RMSNorm, RoPE, SwiGLU, GQA).

Names are read without the `model.` base prefix. RoPE scaling: default, linear, llama3.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lmx.hf.core import (HFTransformer, Rule, hf_extra_fields, label_fields, linear, norm,
                         strip_and_untie, text_inputs, transformer_module)
from lmx.models.transformer import Transformer, TransformerConfig

MODEL_TYPES = ("llama",)
ARCHITECTURES = {"hidden": "LlamaModel", "causal_lm": "LlamaForCausalLM",
                 "sequence_classification": "LlamaForSequenceClassification",
                 "token_classification": "LlamaForTokenClassification"}
PREFIX = "model."
_LAYER = {"attention/query": "self_attn.q_proj", "attention/key": "self_attn.k_proj",
          "attention/value": "self_attn.v_proj", "attention/out": "self_attn.o_proj",
          "mlp/gate": "mlp.gate_proj", "mlp/up": "mlp.up_proj", "mlp/down": "mlp.down_proj"}
_KEEP = ("bos_token_id", "eos_token_id", "pad_token_id", "id2label", "label2id")


def owns(module) -> bool:
    cfg = getattr(module, "cfg", None)
    return isinstance(module, Transformer) and cfg.causal and cfg.positions == "rope"


def rope_parameters(hf: dict[str, Any]) -> tuple[float, tuple]:
    """(theta, scaling items) from transformers v5 `rope_parameters` or v4 `rope_theta` /
    `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    params = {**scaling, **params}
    if "type" in params:
        params["rope_type"] = params.pop("type")
    return float(theta), tuple(sorted(params.items()))


def config(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r} is not supported (silu)")
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        raise ValueError("config.json attention_bias != mlp_bias is not supported")
    heads = hf["num_attention_heads"]
    theta, scaling = rope_parameters(hf)
    fields = dict(
        vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"], max_len=hf["max_position_embeddings"], causal=True,
        positions="rope", rope_theta=theta, rope_scaling=scaling, norm="rmsnorm",
        pre_norm=True, norm_eps=hf["rms_norm_eps"], mlp="swiglu",
        use_bias=bool(hf.get("attention_bias", False)),
        tie_embeddings=hf.get("tie_word_embeddings", False), classifier_bias=False,
        dropout_rate=0.0, attention_dropout_rate=hf.get("attention_dropout", 0.0))
    return TransformerConfig(**{**fields, **overrides})


def build(hf: dict[str, Any], task: str, num_labels: int | None, peft_spec=None,
          **overrides: Any) -> HFTransformer:
    return transformer_module(config(hf, **overrides), hf, task, num_labels, peft_spec,
                              "llama", "last")


example_inputs = text_inputs


def tensor_map(module) -> dict[str, Rule]:
    cfg = module.cfg
    rules = {"params/embed/token/embedding": Rule("embed_tokens.weight"),
             "params/head/lm/kernel": Rule("lm_head.weight", "linear"),
             "params/head/classifier/kernel": Rule("score.weight", "linear")}
    rules |= norm("final_norm", "norm", bias=False)
    for i in range(cfg.num_layers):
        layer, h = f"layer_{i}", f"layers.{i}"
        rules |= norm(f"{layer}/attention_norm", f"{h}.input_layernorm", bias=False)
        rules |= norm(f"{layer}/mlp_norm", f"{h}.post_attention_layernorm", bias=False)
        for lmx_name, hf_name in _LAYER.items():
            rules |= linear(f"{layer}/{lmx_name}", f"{h}.{hf_name}", bias=cfg.use_bias)
    if module.task == "token_classification":
        rules |= linear("head/classifier", "score")
    return rules


def is_new_for_task(path: str) -> bool:
    return path.startswith("params/head/")


def read_hook(tensors: dict[str, np.ndarray], module) -> dict[str, np.ndarray]:
    tied = {"lm_head.weight": "embed_tokens.weight"} if module.cfg.tie_embeddings else {}
    return strip_and_untie(tensors, PREFIX, tied)


def write_hook(tensors: dict[str, np.ndarray], module) -> dict[str, np.ndarray]:
    if module.task == "hidden":
        return tensors
    heads = ("lm_head.", "score.")
    return {k if k.startswith(heads) else PREFIX + k: v for k, v in tensors.items()}


def to_hf_config(module) -> dict[str, Any]:
    cfg = module.cfg
    rope = {"rope_type": "default", **dict(cfg.rope_scaling), "rope_theta": cfg.rope_theta}
    hf = dict(model_type="llama", architectures=[ARCHITECTURES[module.task]],
              vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim,
              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
              num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim,
              intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_len,
              rms_norm_eps=cfg.norm_eps, hidden_act="silu", rope_parameters=rope,
              attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias,
              tie_word_embeddings=cfg.tie_embeddings,
              attention_dropout=cfg.attention_dropout_rate)
    return label_fields(hf | hf_extra_fields(module), module)
