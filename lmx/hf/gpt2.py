"""GPT-2 checkpoints <-> lmx.models.transformer.Transformer (pre-LN decoder, learned positions).

GPT-2's Conv1D stores weights as (in, out), lmx's layout, and fuses query, key and value
in `c_attn`: each is one third of it (Rule.part). Names are read without the
`transformer.` base prefix.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lmx.hf.core import (HFTransformer, Rule, hf_extra_fields, label_fields, linear, norm,
                         strip_and_untie, text_inputs, transformer_module)
from lmx.models.transformer import Transformer, TransformerConfig

MODEL_TYPES = ("gpt2",)
ARCHITECTURES = {"hidden": "GPT2Model", "causal_lm": "GPT2LMHeadModel",
                 "sequence_classification": "GPT2ForSequenceClassification",
                 "token_classification": "GPT2ForTokenClassification"}
PREFIX = "transformer."
FAN_IN_FAN_OUT = True  # Conv1D weights are (in, out); PEFT's flag for them
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
_KEEP = ("bos_token_id", "eos_token_id", "pad_token_id", "id2label", "label2id")


def owns(module) -> bool:
    cfg = getattr(module, "cfg", None)
    return (isinstance(module, Transformer) and cfg.causal and cfg.positions == "learned")


def config(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    if hf.get("activation_function") not in _ACTIVATIONS:
        raise ValueError(f"config.json activation_function={hf.get('activation_function')!r} "
                         f"is not supported ({sorted(_ACTIVATIONS)})")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(key):
            raise ValueError(f"config.json {key}=True is not supported")
    width, heads = hf["n_embd"], hf["n_head"]
    fields = dict(
        vocab_size=hf["vocab_size"], embed_dim=width, num_layers=hf["n_layer"], num_heads=heads,
        head_dim=width // heads, mlp_dim=hf.get("n_inner") or 4 * width,
        max_len=hf["n_positions"], causal=True, pre_norm=True,
        norm_eps=hf["layer_norm_epsilon"], mlp=_ACTIVATIONS[hf["activation_function"]],
        tie_embeddings=hf.get("tie_word_embeddings", True), classifier_bias=False,
        dropout_rate=hf["resid_pdrop"], attention_dropout_rate=hf["attn_pdrop"])
    return TransformerConfig(**{**fields, **overrides})


def build(hf: dict[str, Any], task: str, num_labels: int | None, peft_spec=None,
          **overrides: Any) -> HFTransformer:
    return transformer_module(config(hf, **overrides), hf, task, num_labels, peft_spec,
                              "gpt2", "last")


example_inputs = text_inputs


def tensor_map(module) -> dict[str, Rule]:
    rules = {"params/embed/token/embedding": Rule("wte.weight"),
             "params/embed/position/embedding": Rule("wpe.weight"),
             "params/head/lm/kernel": Rule("lm_head.weight", "linear"),
             "params/head/classifier/kernel": Rule("score.weight", "linear")}
    rules |= norm("final_norm", "ln_f")
    for i in range(module.cfg.num_layers):
        layer, h = f"layer_{i}", f"h.{i}"
        rules |= norm(f"{layer}/attention_norm", f"{h}.ln_1")
        rules |= norm(f"{layer}/mlp_norm", f"{h}.ln_2")
        for j, name in enumerate(("query", "key", "value")):
            rules[f"params/{layer}/attention/{name}/kernel"] = Rule(
                f"{h}.attn.c_attn.weight", "copy", (j, 3))
            rules[f"params/{layer}/attention/{name}/bias"] = Rule(
                f"{h}.attn.c_attn.bias", "copy", (j, 3))
        rules |= linear(f"{layer}/attention/out", f"{h}.attn.c_proj", kind="copy")
        rules |= linear(f"{layer}/mlp/up", f"{h}.mlp.c_fc", kind="copy")
        rules |= linear(f"{layer}/mlp/down", f"{h}.mlp.c_proj", kind="copy")
    if module.task == "token_classification":
        rules |= linear("head/classifier", "classifier")
    return rules


def is_new_for_task(path: str) -> bool:
    return path.startswith("params/head/")


def read_hook(tensors: dict[str, np.ndarray], module) -> dict[str, np.ndarray]:
    tied = {"lm_head.weight": "wte.weight"} if module.cfg.tie_embeddings else {}
    return strip_and_untie(tensors, PREFIX, tied)


def write_hook(tensors: dict[str, np.ndarray], module) -> dict[str, np.ndarray]:
    if module.task == "hidden":
        return tensors
    heads = ("lm_head.", "score.", "classifier.")
    return {k if k.startswith(heads) else PREFIX + k: v for k, v in tensors.items()}


def to_hf_config(module) -> dict[str, Any]:
    cfg = module.cfg
    activation = {"gelu_tanh": "gelu_new", "gelu": "gelu"}[cfg.mlp]
    hf = dict(model_type="gpt2", architectures=[ARCHITECTURES[module.task]],
              vocab_size=cfg.vocab_size, n_embd=cfg.embed_dim, n_layer=cfg.num_layers,
              n_head=cfg.num_heads, n_inner=cfg.mlp_dim, n_positions=cfg.max_len,
              layer_norm_epsilon=cfg.norm_eps, activation_function=activation,
              tie_word_embeddings=cfg.tie_embeddings, resid_pdrop=cfg.dropout_rate,
              embd_pdrop=cfg.dropout_rate, attn_pdrop=cfg.attention_dropout_rate)
    return label_fields(hf | hf_extra_fields(module), module)
