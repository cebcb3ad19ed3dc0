"""Options today's open decoders add to the Transformer, as general layers: norms with a
`(offset + w)` gain (Gemma's `1 + w`), tanh soft-capping, sliding-window (local) attention
masks, the per-layer local / global pattern, and the MLP (GELU, SwiGLU, GeGLU).

Axis legend: B batch, T query length, S key length, D model width, F mlp hidden,
C cache slots.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmx.models.layers import Dense, gelu, layer_norm, rms_norm
from lmx.peft import NO_PEFT, PeftSpec
from lmx.scale import sharding as ax

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "swiglu", "geglu_tanh")
LAYER_TYPES = ("global", "local")
CACHE_DTYPES = ("float32", "bfloat16")


class OffsetRMSNorm(nn.Module):
    """RMSNorm computed in float32 whose gain is `offset + scale`, `scale` starting at 0
    (Gemma's `x / rms(x) * (1 + w)`)."""
    eps: float
    offset: float
    axis_name: str = ax.EMBED

    @nn.compact
    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        width = x_BxD.shape[-1]
        scale_D = self.param("scale", nn.with_logical_partitioning(
            nn.initializers.zeros, (self.axis_name,)), (width,))
        x32 = x_BxD.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        gain = (self.offset + scale_D.astype(jnp.float32)).reshape((1,) * (x_BxD.ndim - 1)
                                                                   + (width,))
        return (y * gain).astype(x_BxD.dtype)


def make_norm(cfg: Any, name: str, axis_name: str = ax.EMBED) -> nn.Module:
    """The config's norm: LayerNorm, RMSNorm, or RMSNorm with a `norm_scale_offset` gain."""
    if cfg.norm == "layernorm":
        return layer_norm(name, cfg.norm_eps, axis_name)
    if cfg.norm_scale_offset:
        return OffsetRMSNorm(cfg.norm_eps, cfg.norm_scale_offset, axis_name, name=name)
    return rms_norm(name, cfg.norm_eps, axis_name)


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """`cap * tanh(x / cap)` (Gemma 2's attention and final logits); cap 0 leaves x alone."""
    return cap * jnp.tanh(x / cap) if cap else x


def window_mask(query_index_T: jax.Array, key_index_S: jax.Array, window: int) -> jax.Array:
    """(T, S): key slot within `window` slots of the query (distance < window), as
    transformers' sliding-window mask counts them (over sequence / cache slots)."""
    return key_index_S[None, :] > query_index_T[:, None] - window


def layer_is_local(cfg: Any, layer: int) -> bool:
    return bool(cfg.layer_types) and cfg.layer_types[layer] == "local"


def check(cfg: Any) -> None:
    """Errors naming the field for decoder options that do not fit together."""
    if cfg.norm not in NORMS:
        raise ValueError(f"norm={cfg.norm!r} is not one of {NORMS}")
    if cfg.mlp not in MLPS:
        raise ValueError(f"mlp={cfg.mlp!r} is not one of {MLPS}")
    if cfg.kv_cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype={cfg.kv_cache_dtype!r} is not one of {CACHE_DTYPES}")
    if cfg.layer_types:
        if len(cfg.layer_types) != cfg.num_layers:
            raise ValueError(f"layer_types has {len(cfg.layer_types)} entries for "
                             f"num_layers={cfg.num_layers}")
        unknown = sorted(set(cfg.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ValueError(f"layer_types {unknown} are not in {LAYER_TYPES}")
        if "local" in cfg.layer_types and cfg.sliding_window <= 0:
            raise ValueError("layer_types has local layers but sliding_window is not > 0")
    if cfg.norm_scale_offset and cfg.norm != "rmsnorm":
        raise ValueError("norm_scale_offset needs norm='rmsnorm'")


class Mlp(nn.Module):
    """`down(act(up(x)))`, or a gated `down(act(gate(x)) * up(x))` (SwiGLU, GeGLU)."""
    cfg: Any
    peft: PeftSpec = NO_PEFT

    @nn.compact
    def __call__(self, x_BTD, deterministic: bool):
        cfg = self.cfg
        dense = lambda features, axes, name: Dense(
            features, axes, cfg.use_bias, cfg.compute_dtype, peft=self.peft, name=name)
        up_BTF = dense(cfg.mlp_dim, (ax.EMBED, ax.MLP), "up")(x_BTD, deterministic)
        if cfg.mlp in ("swiglu", "geglu_tanh"):
            gate_BTF = dense(cfg.mlp_dim, (ax.EMBED, ax.MLP), "gate")(x_BTD, deterministic)
            act = nn.silu if cfg.mlp == "swiglu" else lambda h: gelu(h, approximate=True)
            h_BTF = act(gate_BTF) * up_BTF
        else:
            h_BTF = gelu(up_BTF, cfg.mlp == "gelu_tanh")
        h_BTF = nn.with_logical_constraint(h_BTF, (ax.BATCH, ax.LENGTH, ax.MLP))
        return dense(cfg.embed_dim, (ax.MLP, ax.EMBED), "down")(h_BTF, deterministic)
