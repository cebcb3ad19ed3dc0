"""HF ViT (`ViTModel`, `ViTForImageClassification`) <-> `lmx.models.vit.ViT`; the contract is core.py's.

HF names are read without the `vit.` base prefix (stripped on read, added on write for the
classifier model), so either class's checkpoint serves either task; the hidden task carries
ViTModel's tanh pooler.
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lmx.hf.core import Rule, linear, norm
from lmx.models import vit
from lmx.models.transformer import TransformerConfig
from lmx.peft import NO_PEFT, PeftSpec

MODEL_TYPES = ("vit",)
ARCHITECTURES = {"hidden": "ViTModel", "image_classification": "ViTForImageClassification"}
BASE_PREFIX = "vit."  # ViTPreTrainedModel.base_model_prefix
_HEAD = "classifier."

# transformers' ViTConfig defaults, for config.json files that omit keys.
_HF_DEFAULTS = dict(hidden_act="gelu", qkv_bias=True, layer_norm_eps=1e-12, image_size=224,
                    patch_size=16, num_channels=3, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, pooler_act="tanh",
                    pooler_output_size=None, head_dim=None,
                    id2label={"0": "LABEL_0", "1": "LABEL_1"})
_LAYER = {  # lmx module under layer_{i} -> HF module under encoder.layer.{i}
    "attention_norm": "layernorm_before",
    "attention/query": "attention.attention.query",
    "attention/key": "attention.attention.key",
    "attention/value": "attention.attention.value",
    "attention/out": "attention.output.dense",
    "mlp_norm": "layernorm_after",
    "mlp/up": "intermediate.dense",
    "mlp/down": "output.dense",
}


def _square(hf: dict[str, Any], key: str) -> int:
    value = hf[key]
    sides = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(sides) != 2 or sides[0] != sides[1]:
        raise ValueError(f"{key}={value!r}: lmx ViT takes square images and patches only")
    return int(sides[0])


def _check_supported(hf: dict[str, Any]) -> None:
    """Refuses config values whose model lmx.models.vit.ViT does not compute (encoder_stride, used
    only by masked image modeling, is ignored)."""
    wanted = dict(hidden_act="gelu", qkv_bias=True, pooler_act="tanh")
    for key, value in wanted.items():
        if hf[key] != value:
            raise ValueError(f"ViT config {key}={hf[key]!r} is not supported (lmx needs {value!r})")
    if hf["pooler_output_size"] not in (None, hf["hidden_size"]):
        raise ValueError(f"ViT config pooler_output_size={hf['pooler_output_size']} is not "
                         f"supported (lmx needs hidden_size={hf['hidden_size']})")


def build(hf_config: dict[str, Any], task: str, num_labels: int | None,
          peft_spec: PeftSpec | None, **overrides: Any) -> vit.ViT:
    """The lmx ViT of a HF ViT config.json; overrides replace ViTConfig or encoder fields."""
    hf = {**_HF_DEFAULTS, **hf_config}
    _check_supported(hf)
    if task not in vit.TASKS:
        raise ValueError(f"task={task!r}: a ViT checkpoint serves {vit.TASKS}")
    num_heads = hf["num_attention_heads"]
    encoder = TransformerConfig(
        vocab_size=0, embed_dim=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=num_heads, head_dim=hf["head_dim"] or hf["hidden_size"] // num_heads,
        mlp_dim=hf["intermediate_size"], max_len=0, pre_norm=True, norm="layernorm",
        norm_eps=hf["layer_norm_eps"], mlp="gelu", use_bias=True,
        dropout_rate=hf["hidden_dropout_prob"],
        attention_dropout_rate=hf["attention_probs_dropout_prob"])
    cfg = vit.ViTConfig(encoder, image_size=_square(hf, "image_size"),
                        patch_size=_square(hf, "patch_size"), num_channels=hf["num_channels"],
                        use_pooler=task == "hidden")
    cfg = vit.replace(cfg, max_len=cfg.num_patches + 1, **overrides)
    num_labels = len(hf["id2label"]) if num_labels is None else num_labels
    return vit.ViT(cfg, task=task, num_labels=num_labels, peft=peft_spec or NO_PEFT)


def example_inputs(module: vit.ViT) -> tuple:
    cfg = module.cfg
    return (jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32),)


# transformers 5 renames ViT's modules at load time (checkpoints keep the names above); PEFT
# adapters name the live modules.
_LIVE = ((r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)$",
          lambda m: f"layers.{m[1]}.attention.{m[2][0]}_proj"),
         (r"encoder\.layer\.(\d+)\.attention\.output\.dense$",
          lambda m: f"layers.{m[1]}.attention.o_proj"),
         (r"encoder\.layer\.(\d+)\.intermediate\.dense$", lambda m: f"layers.{m[1]}.mlp.fc1"),
         (r"encoder\.layer\.(\d+)\.output\.dense$", lambda m: f"layers.{m[1]}.mlp.fc2"))


def peft_module_name(checkpoint_module: str) -> str:
    """The live transformers module name PEFT uses for a checkpoint module name."""
    for pattern, rename in _LIVE:
        match = re.search(pattern, checkpoint_module)
        if match:
            return checkpoint_module[:match.start()] + rename(match)
    return checkpoint_module


def tensor_map(module: vit.ViT) -> dict[str, Rule]:
    """Every lmx leaf of `module` and the HF tensor it is (base prefix stripped)."""
    rules = {
        "params/cls_token": Rule("embeddings.cls_token"),
        "params/position_embedding": Rule("embeddings.position_embeddings"),
        "params/patch_embed/kernel": Rule("embeddings.patch_embeddings.projection.weight",
                                          "conv"),
        "params/patch_embed/bias": Rule("embeddings.patch_embeddings.projection.bias"),
        **norm("final_norm", "layernorm"),
    }
    for i in range(module.cfg.encoder.num_layers):
        for lmx_name, hf_name in _LAYER.items():
            make = norm if lmx_name.endswith("norm") else linear
            rules.update(make(f"layer_{i}/{lmx_name}", f"encoder.layer.{i}.{hf_name}"))
    if module.task == "hidden" and module.cfg.use_pooler:
        rules.update(linear("pooler", "pooler.dense"))
    if module.task == "image_classification":
        rules.update(linear("head/classifier", "classifier"))
    return rules


def read_hook(tensors: dict[str, np.ndarray], module: vit.ViT) -> dict[str, np.ndarray]:
    return {k.removeprefix(BASE_PREFIX): v for k, v in tensors.items()}


def write_hook(tensors: dict[str, np.ndarray], module: vit.ViT) -> dict[str, np.ndarray]:
    """ViTForImageClassification's names: the base model under `vit.`, the classifier not."""
    if module.task == "hidden":
        return tensors
    return {k if k.startswith(_HEAD) else BASE_PREFIX + k: v for k, v in tensors.items()}


def is_new_for_task(path: str) -> bool:
    """The classifier, and the pooler (ViTForImageClassification checkpoints lack it)."""
    return path.startswith(("params/head/", "params/pooler/"))


def owns(module: nn.Module) -> bool:
    return isinstance(module, vit.ViT)


def to_hf_config(module: vit.ViT) -> dict[str, Any]:
    """config.json for transformers' ViT class of `module.task`."""
    cfg, enc = module.cfg, module.cfg.encoder
    representable = dict(causal=False, pre_norm=True, norm="layernorm", mlp="gelu",
                         use_bias=True, kv_heads=enc.num_heads,
                         head_dim=enc.embed_dim // enc.num_heads)
    for key, value in representable.items():
        if getattr(enc, key) != value:
            raise ValueError(f"ViT encoder {key}={getattr(enc, key)!r} has no HF ViT "
                             f"equivalent (needs {value!r})")
    labels = {str(i): f"LABEL_{i}" for i in range(module.num_labels)}
    return dict(
        model_type="vit", architectures=[ARCHITECTURES[module.task]],
        hidden_size=enc.embed_dim, num_hidden_layers=enc.num_layers,
        num_attention_heads=enc.num_heads, intermediate_size=enc.mlp_dim, hidden_act="gelu",
        hidden_dropout_prob=enc.dropout_rate,
        attention_probs_dropout_prob=enc.attention_dropout_rate, layer_norm_eps=enc.norm_eps,
        image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.num_channels,
        qkv_bias=True, encoder_stride=cfg.patch_size, pooler_act="tanh",
        pooler_output_size=enc.embed_dim, initializer_range=0.02,
        id2label=labels, label2id={v: int(k) for k, v in labels.items()})
