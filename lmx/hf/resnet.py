"""HF ResNet (`ResNetForImageClassification`, microsoft/resnet-* layout) <-> `lmx.models.resnet.ResNet`.

The two compute the same function for HF's defaults: 7x7/2 stem, 3x3/2 max-pool padded by
1, stride on the first block of stages 1.. (not stage 0: `downsample_in_first_stage`
False), on the bottleneck's 3x3 conv (v1.5: `downsample_in_bottleneck` False), a 1x1
projection shortcut wherever channels or stride change, BatchNorm eps 1e-5. BatchNorm
running statistics go to `batch_stats`. HF names are read without the `resnet.` base prefix
(stripped on read, added on write), so ResNetModel checkpoints load too (new classifier).
The contract is core.py's.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lmx.hf.core import Rule, linear
from lmx.models import resnet
from lmx.peft import NO_PEFT, PeftSpec

MODEL_TYPES = ("resnet",)
ARCHITECTURES = {"hidden": "ResNetModel", "image_classification": "ResNetForImageClassification"}
BASE_PREFIX = "resnet."  # ResNetPreTrainedModel.base_model_prefix
_HEAD = "classifier."

# transformers' ResNetConfig defaults, for config.json files that omit keys.
_HF_DEFAULTS = dict(num_channels=3, embedding_size=64, hidden_sizes=[256, 512, 1024, 2048],
                    depths=[3, 4, 6, 3], layer_type="bottleneck", hidden_act="relu",
                    downsample_in_first_stage=False, downsample_in_bottleneck=False,
                    id2label={"0": "LABEL_0", "1": "LABEL_1"})
_FIXED = dict(num_channels=3, hidden_act="relu", downsample_in_first_stage=False,
              downsample_in_bottleneck=False)  # the only values lmx.models.resnet computes
_BN_EPS = 1e-5  # torch BatchNorm2d's default; HF ResNet never changes it
_IMAGE_SIDE = 64  # for shape inference only


def _check_supported(hf: dict[str, Any], task: str) -> None:
    for key, value in _FIXED.items():
        if hf[key] != value:
            raise ValueError(f"ResNet config {key}={hf[key]!r} is not supported "
                             f"(lmx.models.resnet needs {value!r})")
    if hf["layer_type"] not in resnet.BLOCKS:
        raise ValueError(f"ResNet config layer_type={hf['layer_type']!r} is not one of "
                         f"{resnet.BLOCKS}")
    if task != "image_classification":
        raise ValueError(
            f"task={task!r}: lmx.models.resnet.ResNet always ends in a classifier; load with "
            "task='image_classification' and read the last feature map from the sown "
            "`intermediates/features` (HF ResNetModel's last_hidden_state, NHWC)")


def build(hf_config: dict[str, Any], task: str, num_labels: int | None,
          peft_spec: PeftSpec | None, **overrides: Any) -> resnet.ResNet:
    """The lmx ResNet of a HF ResNet config.json; overrides replace ResNetConfig fields."""
    hf = {**_HF_DEFAULTS, **hf_config}
    _check_supported(hf, task)
    cfg = resnet.ResNetConfig(stage_sizes=tuple(hf["depths"]), block=hf["layer_type"],
                              width=hf["embedding_size"], stem_kernel=7, bn_eps=_BN_EPS)
    widths = [_stage_channels(cfg, i) for i in range(len(cfg.stage_sizes))]
    if list(hf["hidden_sizes"]) != widths:
        raise ValueError(f"ResNet config hidden_sizes={hf['hidden_sizes']} is not supported: "
                         f"lmx.models.resnet doubles channels per stage from embedding_size="
                         f"{cfg.width}, giving {widths}")
    cfg = dataclasses.replace(cfg, **overrides)
    num_labels = len(hf["id2label"]) if num_labels is None else num_labels
    return resnet.ResNet(cfg, num_labels=num_labels, peft=peft_spec or NO_PEFT)


def _stage_channels(cfg: resnet.ResNetConfig, stage: int) -> int:
    return cfg.width * 2**stage * cfg.expansion


def example_inputs(module: resnet.ResNet) -> tuple:
    return (jnp.zeros((1, _IMAGE_SIDE, _IMAGE_SIDE, 3), jnp.float32),)


def _conv_norm(lmx_conv: str, lmx_norm: str, hf_module: str) -> dict[str, Rule]:
    """A conv and its BatchNorm: kernel, scale, bias and the running mean / variance."""
    return {f"params/{lmx_conv}/kernel": Rule(f"{hf_module}.convolution.weight", "conv"),
            f"params/{lmx_norm}/scale": Rule(f"{hf_module}.normalization.weight"),
            f"params/{lmx_norm}/bias": Rule(f"{hf_module}.normalization.bias"),
            f"batch_stats/{lmx_norm}/mean": Rule(f"{hf_module}.normalization.running_mean"),
            f"batch_stats/{lmx_norm}/var": Rule(f"{hf_module}.normalization.running_var")}


def tensor_map(module: resnet.ResNet) -> dict[str, Rule]:
    """Every lmx leaf of `module` and the HF tensor it is (base prefix stripped)."""
    cfg = module.cfg
    rules = _conv_norm("stem_conv", "stem_norm", "embedder.embedder")
    convs_per_block = 2 if cfg.block == "basic" else 3
    in_channels = cfg.width
    for i, num_blocks in enumerate(cfg.stage_sizes):
        out_channels = _stage_channels(cfg, i)
        for j in range(num_blocks):
            lmx_block, hf_block = f"stage_{i}/block_{j}", f"encoder.stages.{i}.layers.{j}"
            for k in range(convs_per_block):
                rules.update(_conv_norm(f"{lmx_block}/conv_{k}", f"{lmx_block}/norm_{k}",
                                        f"{hf_block}.layer.{k}"))
            strides = 2 if i > 0 and j == 0 else 1
            if in_channels != out_channels or strides != 1:  # HF's should_apply_shortcut
                rules.update(_conv_norm(f"{lmx_block}/proj_conv", f"{lmx_block}/proj_norm",
                                        f"{hf_block}.shortcut"))
            in_channels = out_channels
    return rules | linear("head/classifier", f"{_HEAD}1")  # classifier.0 is a Flatten


def read_hook(tensors: dict[str, np.ndarray], module: resnet.ResNet) -> dict[str, np.ndarray]:
    return {k.removeprefix(BASE_PREFIX): v for k, v in tensors.items()}


def write_hook(tensors: dict[str, np.ndarray], module: resnet.ResNet) -> dict[str, np.ndarray]:
    """ResNetForImageClassification's names: the base under `resnet.`, the classifier not."""
    return {k if k.startswith(_HEAD) else BASE_PREFIX + k: v for k, v in tensors.items()}


def is_new_for_task(path: str) -> bool:
    return path.startswith("params/head/")


def owns(module: nn.Module) -> bool:
    return isinstance(module, resnet.ResNet)


def to_hf_config(module: resnet.ResNet) -> dict[str, Any]:
    """config.json for transformers' ResNetForImageClassification."""
    cfg = module.cfg
    for key, value in dict(stem_kernel=7, bn_eps=_BN_EPS).items():
        if getattr(cfg, key) != value:
            raise ValueError(f"ResNet {key}={getattr(cfg, key)!r} has no HF ResNet "
                             f"equivalent (needs {value!r})")
    labels = {str(i): f"LABEL_{i}" for i in range(module.num_labels)}
    return dict(
        model_type="resnet", architectures=[ARCHITECTURES["image_classification"]],
        num_channels=3, embedding_size=cfg.width,
        hidden_sizes=[_stage_channels(cfg, i) for i in range(len(cfg.stage_sizes))],
        depths=list(cfg.stage_sizes), layer_type=cfg.block, hidden_act="relu",
        downsample_in_first_stage=False, downsample_in_bottleneck=False,
        id2label=labels, label2id={v: int(k) for k, v in labels.items()})
