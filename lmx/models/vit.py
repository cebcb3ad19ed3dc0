"""The ViT family: a patch embedding and a CLS token in front of pre-norm Transformer blocks.

Axis legend: B batch, H/W image height/width, C channels, P pixels of one patch
(patch_size * patch_size * C), T tokens (patches + CLS), D model width, L labels.

The encoder layers are `lmx.models.transformer.Block`s (so LoRA targets and adapters work as in
the Transformer family); parameter names follow the Transformer's (`layer_{i}/attention/query`,
`final_norm`, `pooler`, `head/classifier`), plus `patch_embed`, `cls_token`,
`position_embedding` shaped as in big_vision and HF ((1, 1, D), (1, T, D)).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmx.models.layers import Dense, Dropout, add_bias, layer_norm, matmul
from lmx.models.transformer import Block, TransformerConfig
from lmx.peft import NO_PEFT, PeftSpec
from lmx.scale import sharding as ax

TASKS = ("hidden", "image_classification")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture of one ViT: the image geometry and a pre-norm, non-causal encoder."""
    encoder: TransformerConfig
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    use_pooler: bool = False  # HF ViTModel's tanh pooler on [CLS]; the hidden task returns it

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _encoder(**fields: Any) -> TransformerConfig:
    """A ViT encoder: pre-norm LayerNorm, erf-GELU MLP, biases everywhere, no vocabulary."""
    return TransformerConfig(vocab_size=0, causal=False, pre_norm=True, norm="layernorm",
                             norm_eps=1e-12, mlp="gelu", use_bias=True, dropout_rate=0.0,
                             attention_dropout_rate=0.0, **fields)


SIZES: dict[str, ViTConfig] = {
    "vit-base-16": ViTConfig(_encoder(embed_dim=768, num_layers=12, num_heads=12, head_dim=64,
                                      mlp_dim=3072, max_len=197),
                             image_size=224, patch_size=16),
    "vit-tiny": ViTConfig(_encoder(embed_dim=32, num_layers=2, num_heads=4, head_dim=8,
                                   mlp_dim=64, max_len=17),
                          image_size=32, patch_size=8),
}


def patchify(images_BHWC: jax.Array, patch: int) -> jax.Array:
    """Non-overlapping patches in row-major order, pixels flattened as (row, column, channel)."""
    B, H, W, C = images_BHWC.shape
    h, w = H // patch, W // patch
    x = images_BHWC.reshape(B, h, patch, w, patch, C).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(B, h * w, patch * patch * C)


class PatchEmbed(nn.Module):
    """A stride-`patch` convolution with bias, as a matmul on patches (the kernel stays HWIO)."""
    cfg: ViTConfig

    @nn.compact
    def __call__(self, images_BHWC: jax.Array) -> jax.Array:
        cfg, D = self.cfg, self.cfg.encoder.embed_dim
        p, C = cfg.patch_size, images_BHWC.shape[-1]
        kernel_HWCD = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, None, ax.CONV_IN, ax.EMBED)), (p, p, C, D))
        bias_D = self.param("bias", nn.with_logical_partitioning(
            nn.initializers.zeros, (ax.EMBED,)), (D,))
        patches_BTP = patchify(images_BHWC, p)
        x_BTD = matmul(patches_BTP, kernel_HWCD.reshape(p * p * C, D), cfg.encoder.compute_dtype)
        return add_bias(x_BTD, bias_D)


class ViT(nn.Module):
    """Patch embedding, CLS token, learned positions, pre-norm blocks, final norm, a task head.

    Attributes:
      cfg: the architecture.
      task: "image_classification" (logits from the CLS token) or "hidden" (the last hidden
        states; `(hidden_BTD, pooled_BD)` when `cfg.use_pooler`, as HF ViTModel returns).
      num_labels: classes of the classifier.
      peft: LoRA targets (module paths such as "layer_0/attention/query") and/or adapters.
    """
    cfg: ViTConfig
    task: str = "image_classification"
    num_labels: int = 0
    peft: PeftSpec = NO_PEFT

    @nn.compact
    def __call__(self, images_BHWC: jax.Array, *, deterministic: bool = True):
        cfg, enc = self.cfg, self.cfg.encoder
        self._check(images_BHWC)
        B, D = images_BHWC.shape[0], enc.embed_dim
        init = nn.initializers.truncated_normal(0.02)
        cls_11D = self.param("cls_token", nn.with_logical_partitioning(
            init, (None, None, ax.EMBED)), (1, 1, D))
        position_1TD = self.param("position_embedding", nn.with_logical_partitioning(
            init, (None, None, ax.EMBED)), (1, cfg.num_patches + 1, D))
        patches_BTD = PatchEmbed(cfg, name="patch_embed")(images_BHWC)
        cls_B1D = jnp.broadcast_to(cls_11D, (B, 1, D)).astype(patches_BTD.dtype)
        x_BTD = jnp.concatenate([cls_B1D, patches_BTD], axis=1) + position_1TD
        x_BTD = Dropout(enc.dropout_rate)(x_BTD, deterministic=deterministic)
        T = x_BTD.shape[1]
        mask_BTS = jnp.ones((B, T, T), bool)
        positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
        for i in range(enc.num_layers):
            x_BTD = nn.with_logical_constraint(x_BTD, (ax.BATCH, ax.LENGTH, ax.EMBED))
            x_BTD = Block(enc, self.peft, name=f"layer_{i}")(
                x_BTD, mask_BTS, positions_BT, deterministic)
        x_BTD = layer_norm("final_norm", enc.norm_eps)(x_BTD)
        if self.task == "hidden":
            return (x_BTD, self._pool(x_BTD)) if cfg.use_pooler else x_BTD
        cls_BD = Dropout(enc.dropout_rate)(x_BTD[:, 0], deterministic=deterministic)
        return Head(cfg, self.num_labels, name="head")(cls_BD)

    def _pool(self, x_BTD: jax.Array) -> jax.Array:
        return jnp.tanh(Dense(self.cfg.encoder.embed_dim, (ax.EMBED, None),
                              dtype=self.cfg.encoder.compute_dtype, peft=self.peft,
                              name="pooler")(x_BTD[:, 0]))

    def _check(self, images_BHWC: jax.Array) -> None:
        cfg = self.cfg
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not one of {TASKS}")
        if self.peft.num_prompt_tokens:
            raise ValueError("ViT does not support prompt tuning (peft.num_prompt_tokens; "
                             "config.peft.method 'prompt' or 'p_tuning')")
        if self.peft.prefix_projection:  # its blocks hold their own prefix vectors only
            raise ValueError("ViT does not support config.peft.prefix_projection=True")
        expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if images_BHWC.shape[1:] != expected:
            raise ValueError(f"images of shape {images_BHWC.shape[1:]} (H, W, C); this ViT "
                             f"takes {expected}")


class Head(nn.Module):
    """The classifier on the CLS token; everything under `params/head` is new for a task."""
    cfg: ViTConfig
    num_labels: int

    @nn.compact
    def __call__(self, h_BD: jax.Array) -> jax.Array:
        return Dense(self.num_labels, (ax.EMBED, None), dtype=self.cfg.encoder.compute_dtype,
                     name="classifier")(h_BD)


def size(name: str, **overrides: Any) -> ViTConfig:
    """A named size from SIZES with field overrides (see `replace`)."""
    if name not in SIZES:
        raise ValueError(f"unknown vit size {name!r}; known: {sorted(SIZES)}")
    return replace(SIZES[name], **overrides)


def replace(cfg: ViTConfig, **overrides: Any) -> ViTConfig:
    """`cfg` with fields replaced: ViTConfig fields by name, any other (e.g. dtype,
    dropout_rate) on its encoder."""
    own = {f.name for f in dataclasses.fields(ViTConfig)}
    encoder = dataclasses.replace(cfg.encoder, **{k: v for k, v in overrides.items()
                                                  if k not in own})
    return dataclasses.replace(cfg, encoder=encoder,
                               **{k: v for k, v in overrides.items() if k in own})
