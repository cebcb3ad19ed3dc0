"""Llama checkpoints <-> lmx.models.transformer.Transformer (RMSNorm, RoPE, SwiGLU, GQA).

Names are read without the `model.` base prefix. RoPE scaling: default, linear, llama3.
The template of the RoPE decoder families (qwen2.py, qwen3.py, mistral.py, gemma2.py,
gemma3.py): they share `decoder_fields`, `tensor_map` (which follows the config's q / k
norms, q / k / v biases and Gemma's sandwich norms), the hooks and `hf_config_fields`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lmx.hf.core import (HFTransformer, Rule, hf_extra_fields, label_fields, linear, norm,
                         strip_and_untie, text_inputs, transformer_module)
from lmx.models.transformer import Transformer, TransformerConfig

def architectures(name: str) -> dict[str, str]:
    """lmx task -> HF class of a Llama-layout family (`name` "Llama": LlamaModel, ...)."""
    return {"hidden": f"{name}Model", "causal_lm": f"{name}ForCausalLM",
            "sequence_classification": f"{name}ForSequenceClassification",
            "token_classification": f"{name}ForTokenClassification"}


def builder(config_fn, model_type: str):
    """A RoPE-decoder family's `build`: its `config_fn(hf, **overrides)` as a module that
    pools the last token and records `model_type` (the family that writes it back)."""
    def build(hf: dict[str, Any], task: str, num_labels: int | None, peft_spec=None,
              **overrides: Any) -> HFTransformer:
        return transformer_module(config_fn(hf, **overrides), hf, task, num_labels, peft_spec,
                                  model_type, "last")
    return build


def require_silu(hf: dict[str, Any]) -> None:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r} is not supported (silu)")


MODEL_TYPES = ("llama",)
ARCHITECTURES = architectures("Llama")
PREFIX = "model."
_LAYER = {"attention/query": "self_attn.q_proj", "attention/key": "self_attn.k_proj",
          "attention/value": "self_attn.v_proj", "attention/out": "self_attn.o_proj",
          "mlp/gate": "mlp.gate_proj", "mlp/up": "mlp.up_proj", "mlp/down": "mlp.down_proj"}
_KEEP = ("bos_token_id", "eos_token_id", "pad_token_id", "id2label", "label2id")


def owns(module) -> bool:
    """RoPE decoders not read from another family (lmx-trained ones included)."""
    cfg = getattr(module, "cfg", None)
    return (isinstance(module, Transformer) and cfg.causal and cfg.positions == "rope"
            and getattr(module, "model_type", "") in ("", "llama"))


def owns_model_type(model_types: tuple[str, ...]):
    """`owns` of a family that writes the modules read from its `model_types`."""
    return lambda module: (isinstance(module, Transformer)
                           and getattr(module, "model_type", "") in model_types)


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


LAYER_TYPES = {"full_attention": "global", "sliding_attention": "local"}


def attention_pattern(hf: dict[str, Any], all_sliding: bool = False) -> dict[str, Any]:
    """sliding_window / layer_types fields from config.json's `layer_types` (or, with
    `all_sliding`, Mistral's: every layer local when `sliding_window` is set)."""
    window = hf.get("sliding_window") or 0
    names = hf.get("layer_types") or []
    if all_sliding:
        names = ["sliding_attention" if window else "full_attention"] * hf["num_hidden_layers"]
    unknown = sorted(set(names) - set(LAYER_TYPES))
    if unknown:
        raise ValueError(f"config.json layer_types {unknown} are not supported "
                         f"({sorted(LAYER_TYPES)})")
    types = tuple(LAYER_TYPES[n] for n in names)
    if "local" not in types:
        return dict(sliding_window=0, layer_types=())
    return dict(sliding_window=int(window), layer_types=types)


def hf_layer_types(cfg) -> list[str]:
    by_lmx = {v: k for k, v in LAYER_TYPES.items()}
    return [by_lmx[t] for t in (cfg.layer_types or ("global",) * cfg.num_layers)]


def decoder_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """TransformerConfig fields every RoPE decoder's config.json gives the same way."""
    heads = hf["num_attention_heads"]
    theta, scaling = rope_parameters(hf)
    return dict(
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


def config(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    require_silu(hf)
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        raise ValueError("config.json attention_bias != mlp_bias is not supported")
    return TransformerConfig(**{**decoder_fields(hf), **overrides})


build = builder(config, "llama")


example_inputs = text_inputs


_NORMS = {"attention_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
_SANDWICH_NORMS = {"attention_norm": "input_layernorm",  # Gemma 2 / 3
                   "attention_post_norm": "post_attention_layernorm",
                   "mlp_norm": "pre_feedforward_layernorm",
                   "mlp_post_norm": "post_feedforward_layernorm"}
_QKV = ("attention/query", "attention/key", "attention/value")


def tensor_map(module) -> dict[str, Rule]:
    cfg = module.cfg
    rules = {"params/embed/token/embedding": Rule("embed_tokens.weight"),
             "params/head/lm/kernel": Rule("lm_head.weight", "linear"),
             "params/head/classifier/kernel": Rule("score.weight", "linear")}
    rules |= norm("final_norm", "norm", bias=False)
    for i in range(cfg.num_layers):
        layer, h = f"layer_{i}", f"layers.{i}"
        for lmx_name, hf_name in (_SANDWICH_NORMS if cfg.post_norms else _NORMS).items():
            rules |= norm(f"{layer}/{lmx_name}", f"{h}.{hf_name}", bias=False)
        if cfg.qk_norm:
            rules |= norm(f"{layer}/attention/query_norm", f"{h}.self_attn.q_norm", bias=False)
            rules |= norm(f"{layer}/attention/key_norm", f"{h}.self_attn.k_norm", bias=False)
        for lmx_name, hf_name in _LAYER.items():
            if lmx_name == "mlp/gate" and cfg.mlp not in ("swiglu", "geglu_tanh"):
                continue
            bias = cfg.use_bias or (cfg.qkv_bias and lmx_name in _QKV)
            rules |= linear(f"{layer}/{lmx_name}", f"{h}.{hf_name}", bias=bias)
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


def hf_config_fields(module, model_type: str, architectures: dict[str, str]) -> dict[str, Any]:
    """config.json fields every RoPE decoder family writes the same way."""
    cfg = module.cfg
    rope = {"rope_type": "default", **dict(cfg.rope_scaling), "rope_theta": cfg.rope_theta}
    return dict(model_type=model_type, architectures=[architectures[module.task]],
                vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_len,
                rms_norm_eps=cfg.norm_eps, rope_parameters=rope,
                tie_word_embeddings=cfg.tie_embeddings,
                attention_dropout=cfg.attention_dropout_rate)


_NOT_LLAMA = ("qkv_bias", "qk_norm", "post_norms", "embed_scale", "attention_scale",
              "attention_softcap", "final_softcap", "layer_types", "norm_scale_offset")


def to_hf_config(module) -> dict[str, Any]:
    cfg = module.cfg
    extra = [f for f in _NOT_LLAMA if getattr(cfg, f)]
    if extra or cfg.mlp != "swiglu":
        raise ValueError(f"a Llama config.json cannot express {extra or ['mlp=' + cfg.mlp]}")
    hf = hf_config_fields(module, "llama", ARCHITECTURES) | dict(
        hidden_act="silu", attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias)
    return label_fields(hf | hf_extra_fields(module), module)
