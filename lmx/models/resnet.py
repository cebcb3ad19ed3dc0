"""The ResNet family: ResNet-18/34 (basic blocks) and ResNet-50 v1.5 (bottleneck blocks).

Axis legend: B batch, H/W image height/width, C channels, D pooled features, L labels.

Parameter names mirror torchvision (`conv_0`/`norm_0` ... per block, `proj_conv`/`proj_norm`
for the projection shortcut), so a converter maps one onto the other name by name.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmx.models.layers import Bottleneck, Conv, Dense
from lmx.peft import NO_PEFT, PeftSpec
from lmx.scale import sharding as ax

BLOCKS = ("basic", "bottleneck")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Architecture of one ResNet; stage i has `width * 2**i` (x4 for bottleneck) channels."""
    stage_sizes: tuple[int, ...]
    block: str = "basic"  # "basic" | "bottleneck"
    width: int = 64
    stem_kernel: int = 7
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: str = "float32"  # matmul input dtype; accumulation is always float32

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1


SIZES: dict[str, ResNetConfig] = {
    "resnet18": ResNetConfig(stage_sizes=(2, 2, 2, 2), block="basic"),
    "resnet34": ResNetConfig(stage_sizes=(3, 4, 6, 3), block="basic"),
    "resnet50": ResNetConfig(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
    "resnet-tiny": ResNetConfig(stage_sizes=(1, 1), block="basic", width=8),
    "resnet-tiny-bottleneck": ResNetConfig(stage_sizes=(1, 1), block="bottleneck", width=8),
}


def batch_norm(cfg: ResNetConfig, train: bool, name: str) -> nn.BatchNorm:
    """BatchNorm over channels; running mean/var go to the `batch_stats` collection."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=cfg.bn_momentum, epsilon=cfg.bn_eps,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (ax.CONV_OUT,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.CONV_OUT,)),
        name=name)


class Block(nn.Module):
    """One residual block: basic (3x3, 3x3) or bottleneck v1.5 (1x1, 3x3 with the stride, 1x1)."""
    cfg: ResNetConfig
    features: int
    strides: int = 1
    peft: PeftSpec = NO_PEFT

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
        cfg, s = self.cfg, (self.strides, self.strides)
        if cfg.block == "basic":
            layers = [(self.features, (3, 3), s), (self.features, (3, 3), (1, 1))]
        else:
            layers = [(self.features, (1, 1), (1, 1)), (self.features, (3, 3), s),
                      (self.features * 4, (1, 1), (1, 1))]
        y_BHWC = x_BHWC
        for i, (features, kernel, strides) in enumerate(layers):
            y_BHWC = Conv(features, kernel, strides, cfg.compute_dtype, self.peft,
                          name=f"conv_{i}")(y_BHWC, not train)
            y_BHWC = batch_norm(cfg, train, f"norm_{i}")(y_BHWC)
            if i < len(layers) - 1:
                y_BHWC = nn.relu(y_BHWC)
        out_channels = self.features * cfg.expansion
        if x_BHWC.shape[-1] != out_channels or self.strides != 1:
            x_BHWC = Conv(out_channels, (1, 1), s, cfg.compute_dtype, self.peft,
                          name="proj_conv")(x_BHWC, not train)
            x_BHWC = batch_norm(cfg, train, "proj_norm")(x_BHWC)
        return nn.relu(x_BHWC + y_BHWC)


class Stage(nn.Module):
    """`num_blocks` residual blocks; the first one carries the stride."""
    cfg: ResNetConfig
    features: int
    num_blocks: int
    strides: int
    peft: PeftSpec = NO_PEFT

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
        for j in range(self.num_blocks):
            x_BHWC = Block(self.cfg, self.features, self.strides if j == 0 else 1, self.peft,
                           name=f"block_{j}")(x_BHWC, train)
        return x_BHWC


class Head(nn.Module):
    """The classifier; everything under `params/head` is new for a downstream task."""
    cfg: ResNetConfig
    num_labels: int

    @nn.compact
    def __call__(self, h_BD: jax.Array) -> jax.Array:
        return Dense(self.num_labels, (ax.EMBED, None), dtype=self.cfg.compute_dtype,
                     name="classifier")(h_BD)


class ResNet(nn.Module):
    """Stem, stages (with optional adapters between them), global average pool, classifier.

    Attributes:
      cfg: the architecture.
      num_labels: classes of the classifier head.
      peft: LoRA targets among the convs (module paths such as "stage_1/block_0/conv_1")
        and/or a bottleneck adapter after every stage (weights in the `peft` collection).
    """
    cfg: ResNetConfig
    num_labels: int
    peft: PeftSpec = NO_PEFT

    @nn.compact
    def __call__(self, images_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
        cfg, peft = self.cfg, self.peft
        if cfg.block not in BLOCKS:
            raise ValueError(f"block={cfg.block!r} is not one of {BLOCKS}")
        unsupported = [m for m, on in (("ln_tuning", peft.ln_tuning),
                                       ("prompt / p_tuning", peft.num_prompt_tokens),
                                       ("prefix", peft.num_prefix_tokens)) if on]
        if unsupported:  # BatchNorm, not LayerNorm; no tokens, no attention
            raise ValueError(f"config.peft.method={unsupported[0]!r} does not apply to a ResNet "
                             "(BatchNorm, no tokens or attention): use lora, houlsby, "
                             "pfeiffer, bitfit or full")
        constrain = lambda x: nn.with_logical_constraint(x, (ax.BATCH, None, None, ax.CONV_OUT))
        k = cfg.stem_kernel
        x_BHWC = Conv(cfg.width, (k, k), (2, 2), cfg.compute_dtype, peft,
                      name="stem_conv")(images_BHWC, not train)
        x_BHWC = nn.relu(batch_norm(cfg, train, "stem_norm")(x_BHWC))
        x_BHWC = nn.max_pool(x_BHWC, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, num_blocks in enumerate(cfg.stage_sizes):
            x_BHWC = Stage(cfg, cfg.width * 2**i, num_blocks, 1 if i == 0 else 2, peft,
                           name=f"stage_{i}")(constrain(x_BHWC), train)
            if peft.adapter != "none":
                x_BHWC = Bottleneck(peft.adapter_size, feature_axis=ax.CONV_OUT,
                                    dtype=cfg.compute_dtype, name=f"adapter_{i}")(x_BHWC)
        self.sow("intermediates", "features", x_BHWC)  # Grad-CAM's feature map, if mutable
        features_BD = jnp.mean(constrain(x_BHWC), axis=(1, 2))
        return Head(cfg, self.num_labels, name="head")(features_BD)


def size(name: str, **overrides: Any) -> ResNetConfig:
    """A named size from SIZES with field overrides (e.g. dtype)."""
    if name not in SIZES:
        raise ValueError(f"unknown resnet size {name!r}; known: {sorted(SIZES)}")
    return dataclasses.replace(SIZES[name], **overrides)
