"""BERT and RoBERTa checkpoints <-> lmx.models.transformer.Transformer (post-LN encoder).

HF names are read without the `bert.` / `roberta.` base prefix (stripped on read, added
on write for task models); task heads keep their HF names.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lmx.hf.core import (HFTransformer, Rule, hf_extra_fields, label_fields, linear, norm,
                         strip_and_untie, text_inputs, transformer_module)
from lmx.models.transformer import Transformer, TransformerConfig

MODEL_TYPES = ("bert", "roberta")
TASK_CLASSES = {"hidden": "Model", "mlm": "ForMaskedLM",
                "sequence_classification": "ForSequenceClassification",
                "token_classification": "ForTokenClassification"}
ARCHITECTURES = {t: f"Bert{c}" for t, c in TASK_CLASSES.items()} | {
    f"roberta:{t}": f"Roberta{c}" for t, c in TASK_CLASSES.items()}
_LAYER = {
    "attention/query": "attention.self.query", "attention/key": "attention.self.key",
    "attention/value": "attention.self.value", "attention/out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm", "mlp/up": "intermediate.dense",
    "mlp/down": "output.dense", "mlp_norm": "output.LayerNorm"}
_HEADS = {  # model_type -> lmx module -> HF module
    "bert": {"pooler": "pooler.dense", "head/transform": "cls.predictions.transform.dense",
             "head/transform_norm": "cls.predictions.transform.LayerNorm",
             "head/classifier": "classifier"},
    "roberta": {"pooler": "classifier.dense", "head/transform": "lm_head.dense",
                "head/transform_norm": "lm_head.layer_norm", "head/classifier": "classifier"},
}
_MLM_BIAS = {"bert": "cls.predictions.bias", "roberta": "lm_head.bias"}
_DECODER = {"bert": "cls.predictions.decoder", "roberta": "lm_head.decoder"}


def owns(module) -> bool:
    """BERT-shaped lmx Transformers too (an lmx-trained MiniLM saves as a BERT)."""
    return isinstance(module, Transformer) and not module.cfg.causal and not module.cfg.pre_norm


def config(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    """The TransformerConfig of a BERT / RoBERTa `config.json`."""
    for key, supported in (("hidden_act", ("gelu",)),
                           ("position_embedding_type", ("absolute", None))):
        if hf.get(key) not in supported:
            raise ValueError(f"config.json {key}={hf.get(key)!r} is not supported ({supported})")
    width, heads = hf["hidden_size"], hf["num_attention_heads"]
    if width % heads:
        raise ValueError(f"config.json hidden_size={width} is not divisible by "
                         f"num_attention_heads={heads}")
    roberta = hf["model_type"] == "roberta"
    fields = dict(
        vocab_size=hf["vocab_size"], embed_dim=width, num_layers=hf["num_hidden_layers"],
        num_heads=heads, head_dim=width // heads, mlp_dim=hf["intermediate_size"],
        max_len=hf["max_position_embeddings"], type_vocab_size=hf["type_vocab_size"],
        norm_eps=hf["layer_norm_eps"], position_offset=hf["pad_token_id"] + 1 if roberta else 0,
        use_pooler=True, dropout_rate=hf["hidden_dropout_prob"],
        attention_dropout_rate=hf["attention_probs_dropout_prob"])
    return TransformerConfig(**{**fields, **overrides})


def build(hf: dict[str, Any], task: str, num_labels: int | None, peft_spec=None,
          **overrides: Any) -> HFTransformer:
    task = task.split(":")[-1]  # "roberta:mlm" names RoBERTa's class in ARCHITECTURES
    cfg = config(hf, **{"use_pooler": task in ("sequence_classification", "hidden"),
                        **overrides})
    return transformer_module(cfg, hf, task, num_labels, peft_spec, hf["model_type"], "cls")


example_inputs = text_inputs


def tensor_map(module: HFTransformer) -> dict[str, Rule]:
    if module.task == "sequence_classification" and module.pooling != "cls":
        raise ValueError(f"pooling={module.pooling!r}: transformers' BERT / RoBERTa classifiers "
                         "pool [CLS]; this model has no transformers equivalent")
    heads = _HEADS[_model_type(module)]
    rules = {"params/embed/token/embedding": Rule("embeddings.word_embeddings.weight"),
             "params/embed/position/embedding": Rule("embeddings.position_embeddings.weight"),
             "params/embed/token_type/embedding": Rule("embeddings.token_type_embeddings.weight"),
             "params/head/bias": Rule(_MLM_BIAS[_model_type(module)])}
    rules |= norm("embed/norm", "embeddings.LayerNorm")
    for i in range(module.cfg.num_layers):
        for lmx_name, hf_name in _LAYER.items():
            make = norm if lmx_name.endswith("norm") else linear
            rules |= make(f"layer_{i}/{lmx_name}", f"encoder.layer.{i}.{hf_name}")
    for lmx_name, hf_name in heads.items():
        make = norm if lmx_name.endswith("norm") else linear
        rules |= make(lmx_name, hf_name)
    if _model_type(module) == "roberta" and module.task == "sequence_classification":
        rules |= linear("head/classifier", "classifier.out_proj")
    return rules


def is_new_for_task(path: str) -> bool:
    return path.startswith(("params/head/", "params/pooler/"))


def _model_type(module) -> str:
    return getattr(module, "model_type", "bert")


def _base_prefix(module) -> str:
    return f"{_model_type(module)}."


def read_hook(tensors: dict[str, np.ndarray], module: HFTransformer) -> dict[str, np.ndarray]:
    """Strips the base prefix; checks the MLM decoder is tied to the embeddings, then drops it."""
    decoder = _DECODER[_model_type(module)]
    return strip_and_untie(tensors, _base_prefix(module), {
        f"{decoder}.weight": "embeddings.word_embeddings.weight",
        f"{decoder}.bias": _MLM_BIAS[_model_type(module)]})


def write_hook(tensors: dict[str, np.ndarray], module: HFTransformer) -> dict[str, np.ndarray]:
    if module.task == "hidden":
        return tensors
    heads = tuple(h.split(".")[0] + "." for h in _HEADS[_model_type(module)].values()
                  if not h.startswith("pooler")) + (_MLM_BIAS[_model_type(module)],)
    prefix = _base_prefix(module)
    return {k if k.startswith(heads) else prefix + k: v for k, v in tensors.items()}


def to_hf_config(module: HFTransformer) -> dict[str, Any]:
    cfg = module.cfg
    roberta = _model_type(module) == "roberta"
    key = f"roberta:{module.task}" if roberta else module.task
    hf = dict(
        model_type=_model_type(module), architectures=[ARCHITECTURES[key]],
        vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim, hidden_act="gelu",
        max_position_embeddings=cfg.max_len, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.norm_eps, hidden_dropout_prob=cfg.dropout_rate,
        attention_probs_dropout_prob=cfg.attention_dropout_rate,
        position_embedding_type="absolute", pad_token_id=cfg.position_offset - 1 if roberta else 0)
    return label_fields(hf | hf_extra_fields(module), module)
