"""Pretrained HuggingFace checkpoints (BERT for now) as lmx configs, parameter trees, tokenizers.

No torch: weights come from safetensors files, tokenizers from the `tokenizers` library.
Axis legend: B batch, T length, I/O in/out features of a Linear layer.
"""
from __future__ import annotations

import importlib.util
import json
import pathlib
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from safetensors.numpy import load_file

from lmx.hf.tokenizer import Tokenizer, load_tokenizer  # noqa: F401  (the one tokenizer loader)
from lmx.transformer import Transformer, TransformerConfig

HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "vocab.txt", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
             "special_tokens_map.json"]
BERT_MODEL_TYPES = ("bert",)
_BUFFERS = ("embeddings.position_ids",)  # saved by old torch versions; not weights

# lmx module path -> HF BERT module name; the leaf names map through _BERT_LEAVES.
_BERT_MODULES = {
    "embed/token": "embeddings.word_embeddings",
    "embed/position": "embeddings.position_embeddings",
    "embed/token_type": "embeddings.token_type_embeddings",
    "embed/norm": "embeddings.LayerNorm",
    "pooler": "pooler.dense",
    "head/transform": "cls.predictions.transform.dense",
    "head/transform_norm": "cls.predictions.transform.LayerNorm",
}
_BERT_LAYER_MODULES = {
    "attention/query": "attention.self.query",
    "attention/key": "attention.self.key",
    "attention/value": "attention.self.value",
    "attention/out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "mlp/up": "intermediate.dense",
    "mlp/down": "output.dense",
    "mlp_norm": "output.LayerNorm",
}
_BERT_LEAVES = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}


def resolve_model_dir(name: str) -> pathlib.Path:
    """A local directory, an installed package that ships a model, or a HuggingFace hub id."""
    path = pathlib.Path(name).expanduser()
    if path.is_dir():
        return path
    module = name.replace("-", "_")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is not None and spec.submodule_search_locations:
        package = pathlib.Path(list(spec.submodule_search_locations)[0])
        return package / "model" if (package / "model" / "config.json").is_file() else package
    try:
        import huggingface_hub  # lazily: only hub ids need it
        return pathlib.Path(huggingface_hub.snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as error:  # offline, unknown repo, malformed id: all mean "not found"
        raise FileNotFoundError(
            f"cannot find model {name!r}: not a local directory, not an installed Python package, "
            f"and the HuggingFace hub did not provide it ({type(error).__name__}: {error})"
        ) from error


def bert_config(hf_config: dict[str, Any], **overrides: Any) -> TransformerConfig:
    """The TransformerConfig of a HuggingFace BERT `config.json`; `overrides` replace fields."""
    if hf_config.get("model_type") not in BERT_MODEL_TYPES:
        raise ValueError(f"model_type={hf_config.get('model_type')!r} is not supported; "
                         f"expected one of {BERT_MODEL_TYPES}")
    if hf_config["hidden_act"] != "gelu":
        raise ValueError(f"hidden_act={hf_config['hidden_act']!r}: only 'gelu' (erf) is supported")
    positions = hf_config.get("position_embedding_type", "absolute")  # absent in old configs
    if positions != "absolute":
        raise ValueError(f"position_embedding_type={positions!r}: only 'absolute' is supported")
    width, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    if width % heads:
        raise ValueError(f"hidden_size={width} is not divisible by num_attention_heads={heads}")
    fields = dict(
        vocab_size=hf_config["vocab_size"], embed_dim=width,
        num_layers=hf_config["num_hidden_layers"], num_heads=heads, head_dim=width // heads,
        mlp_dim=hf_config["intermediate_size"], max_len=hf_config["max_position_embeddings"],
        type_vocab_size=hf_config["type_vocab_size"], norm_eps=hf_config["layer_norm_eps"],
        mlp="gelu", causal=False, pre_norm=False, norm="layernorm", positions="learned",
        use_bias=True, tie_embeddings=True, use_pooler=True,
        dropout_rate=hf_config["hidden_dropout_prob"],
        attention_dropout_rate=hf_config["attention_probs_dropout_prob"])
    return TransformerConfig(**{**fields, **overrides})


def _hf_name(path: str) -> str:
    """The HF BERT tensor name of an lmx parameter path such as `layer_0/mlp/up/kernel`."""
    if path == "head/bias":
        return "cls.predictions.bias"
    module, leaf = path.rsplit("/", 1)
    layer = re.fullmatch(r"layer_(\d+)/(.+)", module)
    if layer:
        hf_module = f"encoder.layer.{layer[1]}.{_BERT_LAYER_MODULES[layer[2]]}"
    else:
        hf_module = _BERT_MODULES[module]
    return f"{hf_module}.{_BERT_LEAVES[leaf]}"


def _expected_shapes(cfg: TransformerConfig, pooler: bool, mlm: bool) -> dict[str, tuple]:
    """Flat `path -> shape` of the lmx parameters a BERT checkpoint fills (from lmx itself)."""
    ids_BT = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    key = jax.random.key(0)

    def shapes(task, **kw):
        model = Transformer(cfg, task=task, **kw)
        tree = nn.meta.unbox(jax.eval_shape(model.init, key, ids_BT)["params"])
        return {p: v.shape for p, v in traverse_util.flatten_dict(tree, sep="/").items()}

    wanted = shapes("mlm") if mlm else shapes("hidden")
    if pooler:
        pooled = shapes("sequence_classification", num_labels=1)
        wanted.update({p: s for p, s in pooled.items() if p.startswith("pooler/")})
    return wanted


def _read_tensors(model_dir: pathlib.Path) -> dict[str, np.ndarray]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {model_dir}")
    tensors = {}
    for file in files:  # several files when the checkpoint is sharded
        tensors.update(load_file(str(file)))
    return {name.removeprefix("bert."): array for name, array in tensors.items()}


def _untie_decoder(tensors: dict[str, np.ndarray]) -> None:
    """Consume the MLM decoder, which lmx ties to the word embeddings and `cls.predictions.bias`."""
    tied = {"cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}
    for name, target in tied.items():
        if name not in tensors:
            continue
        decoder = tensors.pop(name)
        tensors.setdefault(target, decoder)
        if not np.array_equal(decoder, tensors[target]):
            raise ValueError(f"{name} differs from {target}; lmx's MLM head ties them")


def load_bert(model_dir: str | pathlib.Path,
              **config_overrides: Any) -> tuple[TransformerConfig, dict[str, Any]]:
    """Reads a HF BERT folder (config.json, *.safetensors) into lmx's config and parameters.

    Returns:
      (cfg, params): `params` is the nested float32 numpy tree for `{"params": params}`,
      with `pooler` and the MLM `head` when the checkpoint has them.
    """
    model_dir = pathlib.Path(model_dir)
    hf_config = json.loads((model_dir / "config.json").read_text())
    tensors = _read_tensors(model_dir)
    has_pooler = any(name.startswith("pooler.") for name in tensors)
    has_mlm = any(name.startswith("cls.predictions.") for name in tensors)
    cfg = bert_config(hf_config, **{"use_pooler": has_pooler, **config_overrides})
    if has_mlm:
        _untie_decoder(tensors)
    flat, missing, mismatched = {}, [], []
    for path, shape in _expected_shapes(cfg, cfg.use_pooler, has_mlm).items():
        name = _hf_name(path)
        if name not in tensors:
            missing.append(name)
            continue
        is_linear = path.endswith("/kernel")  # torch Linear stores (O, I), lmx (I, O)
        hf_shape = shape[::-1] if is_linear else shape
        array = tensors.pop(name)
        if array.shape != hf_shape:
            mismatched.append(f"{name}: checkpoint {array.shape}, lmx expects {hf_shape}")
            continue
        flat[path] = np.ascontiguousarray(array.T if is_linear else array, dtype=np.float32)
    if missing or mismatched:
        raise ValueError(f"checkpoint {model_dir} does not fit lmx: missing tensors {missing}; "
                         f"shape mismatches {mismatched}")
    leftover = sorted(set(tensors) - set(_BUFFERS))
    if leftover:
        logging.warning("load_bert(%s): %d tensors not loaded: %s", model_dir, len(leftover),
                        leftover)
    return cfg, traverse_util.unflatten_dict(flat, sep="/")
