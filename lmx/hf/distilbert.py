"""DistilBERT checkpoints <-> lmx.models.transformer.Transformer (post-LN encoder, no token types).

Its classifier is `pre_classifier` + ReLU on [CLS] (lmx's pooler with a ReLU), its MLM head
`vocab_transform` + GELU + `vocab_layer_norm` + the tied `vocab_projector`. Names are read
without the `distilbert.` base prefix.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lmx.hf.core import (HFTransformer, Rule, hf_extra_fields, label_fields, linear, norm,
                         strip_and_untie, text_inputs, transformer_module)
from lmx.models.transformer import TransformerConfig

MODEL_TYPES = ("distilbert",)
ARCHITECTURES = {"hidden": "DistilBertModel", "mlm": "DistilBertForMaskedLM",
                 "sequence_classification": "DistilBertForSequenceClassification",
                 "token_classification": "DistilBertForTokenClassification"}
PREFIX = "distilbert."
_LAYER = {"attention/query": "attention.q_lin", "attention/key": "attention.k_lin",
          "attention/value": "attention.v_lin", "attention/out": "attention.out_lin",
          "attention_norm": "sa_layer_norm", "mlp/up": "ffn.lin1", "mlp/down": "ffn.lin2",
          "mlp_norm": "output_layer_norm"}
_HEADS = {"pooler": "pre_classifier", "head/classifier": "classifier",
          "head/transform": "vocab_transform", "head/transform_norm": "vocab_layer_norm"}
_KEEP = ("pad_token_id", "id2label", "label2id")


def owns(module) -> bool:
    return getattr(module, "model_type", "") == "distilbert"


def config(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    for key, supported in (("activation", ("gelu",)), ("sinusoidal_pos_embds", (False,))):
        if hf.get(key) not in supported:
            raise ValueError(f"config.json {key}={hf.get(key)!r} is not supported ({supported})")
    fields = dict(
        vocab_size=hf["vocab_size"], embed_dim=hf["dim"], num_layers=hf["n_layers"],
        num_heads=hf["n_heads"], head_dim=hf["dim"] // hf["n_heads"], mlp_dim=hf["hidden_dim"],
        max_len=hf["max_position_embeddings"], type_vocab_size=0, norm_eps=1e-12,
        use_pooler=True, pooler_activation="relu", dropout_rate=hf["dropout"],
        attention_dropout_rate=hf["attention_dropout"])
    return TransformerConfig(**{**fields, **overrides})


def build(hf: dict[str, Any], task: str, num_labels: int | None, peft_spec=None,
          **overrides: Any) -> HFTransformer:
    return transformer_module(config(hf, **overrides), hf, task, num_labels, peft_spec,
                              "distilbert", "cls")


example_inputs = text_inputs


def tensor_map(module) -> dict[str, Rule]:
    rules = {"params/embed/token/embedding": Rule("embeddings.word_embeddings.weight"),
             "params/embed/position/embedding": Rule("embeddings.position_embeddings.weight"),
             "params/head/bias": Rule("vocab_projector.bias")}
    rules |= norm("embed/norm", "embeddings.LayerNorm")
    for i in range(module.cfg.num_layers):
        for lmx_name, hf_name in _LAYER.items():
            make = norm if lmx_name.endswith("norm") else linear
            rules |= make(f"layer_{i}/{lmx_name}", f"transformer.layer.{i}.{hf_name}")
    for lmx_name, hf_name in _HEADS.items():
        rules |= (norm if lmx_name.endswith("norm") else linear)(lmx_name, hf_name)
    return rules


def is_new_for_task(path: str) -> bool:
    return path.startswith(("params/head/", "params/pooler/"))


def read_hook(tensors: dict[str, np.ndarray], module) -> dict[str, np.ndarray]:
    return strip_and_untie(tensors, PREFIX, {
        "vocab_projector.weight": "embeddings.word_embeddings.weight"})


def write_hook(tensors: dict[str, np.ndarray], module) -> dict[str, np.ndarray]:
    if module.task == "hidden":
        return tensors
    heads = tuple(f"{h}." for h in _HEADS.values()) + ("vocab_projector.",)
    return {k if k.startswith(heads) else PREFIX + k: v for k, v in tensors.items()}


def to_hf_config(module) -> dict[str, Any]:
    cfg = module.cfg
    hf = dict(model_type="distilbert", architectures=[ARCHITECTURES[module.task]],
              vocab_size=cfg.vocab_size, dim=cfg.embed_dim, n_layers=cfg.num_layers,
              n_heads=cfg.num_heads, hidden_dim=cfg.mlp_dim,
              max_position_embeddings=cfg.max_len, activation="gelu",
              sinusoidal_pos_embds=False, dropout=cfg.dropout_rate,
              attention_dropout=cfg.attention_dropout_rate, tie_word_embeddings=True)
    return label_fields(hf | hf_extra_fields(module), module)
