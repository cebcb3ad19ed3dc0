"""Multi-head attention with grouped-query heads, RoPE, prefix tuning and a KV cache; the
decoder options of lmx.models.decoder_features (q / k norm, score scaling and soft-capping,
sliding-window local layers, a bfloat16 cache).

Axis legend: B batch, T query length, S key length, D model width, N query heads,
G key/value heads, Q = N // G query heads per group, K head dim, P prefix tokens,
C cache length (decoding).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmx.models import kernels
from lmx.models.decoder_features import make_norm, softcap, window_mask
from lmx.models.layers import Dense, Dropout
from lmx.peft import NO_PEFT, PEFT, PeftSpec
from lmx.scale import sharding as ax

CACHE = "cache"  # the variable collection of decoding state
DECODE_MODES = ("", "prefill", "step")


def rope_frequencies(head_dim: int, theta: float, scaling: tuple[tuple[str, Any], ...]):
    """Inverse frequencies (head_dim // 2,) with HF's "default", "linear" or "llama3" scaling."""
    half = head_dim // 2
    inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
    params = dict(scaling)
    kind = params.get("rope_type", "default")
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / params["factor"]
    if kind == "llama3":
        factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
        old_len = params["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return jnp.where(medium, smoothed, scaled)
    raise ValueError(f"rope_type={kind!r} is not supported (default, linear, llama3)")


def rotary(x_BTNK: jax.Array, positions_BT: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotary position embedding, Llama's rotate-half layout."""
    half = x_BTNK.shape[-1] // 2
    angles_BTk = positions_BT[..., None].astype(jnp.float32) * inv_freq[None, None]
    cos = jnp.cos(angles_BTk)[:, :, None, :]
    sin = jnp.sin(angles_BTk)[:, :, None, :]
    x1, x2 = x_BTNK[..., :half], x_BTNK[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(nn.Module):
    """Multi-head (grouped-query) attention with an optional PEFT prefix and a decoding cache.

    `mask_BTS` is the full attention mask; when decoding it is None and the mask comes from
    the cache: slot s is visible to query t if it holds a real token and s <= its position.
    A `local` layer also hides keys `cfg.sliding_window` or more slots back.
    `mask_BT` holds per-token segment ids (0 padding; packed rows 1, 2, ...): the cache keeps
    which slots are real, and kernels that build their own mask (lmx.models.kernels) read it.
    """
    cfg: Any  # lmx.models.transformer.TransformerConfig (which imports this module)
    peft: PeftSpec = NO_PEFT
    local: bool = False

    @nn.compact
    def __call__(self, x_BTD, mask_BTS, mask_BT, positions_BT, deterministic: bool,
                 decode: str = "", prefix_2PGK=None):
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        N, G, K = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        dense = lambda features, name: Dense(
            features, (ax.EMBED, ax.HEADS), cfg.use_bias or cfg.qkv_bias, cfg.compute_dtype,
            peft=self.peft, name=name)
        q_BTNK = dense(N * K, "query")(x_BTD, deterministic).reshape(B, T, N, K)
        k_BTGK = dense(G * K, "key")(x_BTD, deterministic).reshape(B, T, G, K)
        v_BTGK = dense(G * K, "value")(x_BTD, deterministic).reshape(B, T, G, K)
        if cfg.qk_norm:  # per head, before RoPE (Qwen3, Gemma 3)
            q_BTNK = make_norm(cfg, "query_norm", ax.KV)(q_BTNK)
            k_BTGK = make_norm(cfg, "key_norm", ax.KV)(k_BTGK)
        if cfg.positions == "rope":
            local_rope = self.local and cfg.rope_local_theta
            inv_freq = rope_frequencies(K, cfg.rope_local_theta if local_rope else cfg.rope_theta,
                                        () if local_rope else cfg.rope_scaling)
            q_BTNK = rotary(q_BTNK, positions_BT, inv_freq)
            k_BTGK = rotary(k_BTGK, positions_BT, inv_freq)
        q_BTNK = nn.with_logical_constraint(q_BTNK, (ax.BATCH, ax.LENGTH, ax.HEADS, ax.KV))
        if decode:
            k_BTGK, v_BTGK, mask_BTS = self._cache(k_BTGK, v_BTGK, mask_BT, decode)
        elif self.local:
            index_T = jnp.arange(T)
            mask_BTS = mask_BTS & window_mask(index_T, index_T, cfg.sliding_window)[None]
        if self.peft.num_prefix_tokens:
            k_BTGK, v_BTGK, mask_BTS = self._prefix(k_BTGK, v_BTGK, mask_BTS, prefix_2PGK)
        out_BTF = self._attend(q_BTNK, k_BTGK, v_BTGK, mask_BTS, deterministic, mask_BT, decode)
        return Dense(cfg.embed_dim, (ax.HEADS, ax.EMBED), cfg.use_bias, cfg.compute_dtype,
                     peft=self.peft, name="out")(out_BTF, deterministic)

    def _attend(self, q_BTNK, k_BSGK, v_BSGK, mask_BTS, deterministic, segments_BS=None,
                decode=""):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        B, T, N, K = q_BTNK.shape
        G = k_BSGK.shape[2]
        # a kernel of lmx.models.kernels (init only makes parameters: `init`'s dummy 8-token
        # input is shorter than a splash tile)
        if cfg.attention != "einsum" and not self.is_initializing():
            kernels.refuse_unsupported(
                cfg.attention, dropout=0.0 if deterministic else cfg.attention_dropout_rate,
                probabilities=self.is_mutable_collection("intermediates"),
                prefix=self.peft.num_prefix_tokens, decode=decode)
            if cfg.attention_softcap:
                raise ValueError(f"model.attention={cfg.attention!r} has no attention logit "
                                 "soft-capping (Gemma 2's attn_logit_softcapping): use 'einsum'")
            if cfg.attention_scale:  # the kernels scale by K ** -0.5 (Gemma: query_pre_attn)
                q_BTNK = q_BTNK * (cfg.attention_scale * K ** 0.5)
            out_BTNK = kernels.attend(cfg.attention, q_BTNK.astype(dt), k_BSGK, v_BSGK,
                                      mask_BTS=mask_BTS, segments_BS=segments_BS,
                                      causal=cfg.causal,
                                      sliding_window=cfg.sliding_window if self.local else 0)
            return out_BTNK.reshape(B, T, N * K)
        q_BTGQK = q_BTNK.reshape(B, T, G, N // G, K)
        scores_BGQTS = jnp.einsum("btgqk,bsgk->bgqts", q_BTGQK.astype(dt), k_BSGK.astype(dt),
                                  preferred_element_type=jnp.float32) * (cfg.attention_scale
                                                                         or K ** -0.5)
        scores_BGQTS = softcap(scores_BGQTS, cfg.attention_softcap)
        scores_BGQTS = jnp.where(mask_BTS[:, None, None], scores_BGQTS,
                                 jnp.finfo(jnp.float32).min)
        probs_BGQTS = jax.nn.softmax(scores_BGQTS, axis=-1)
        self.sow("intermediates", "attention_probs", probs_BGQTS)  # kept only if mutable
        probs_BGQTS = Dropout(cfg.attention_dropout_rate)(probs_BGQTS, deterministic=deterministic)
        out_BTGQK = jnp.einsum("bgqts,bsgk->btgqk", probs_BGQTS.astype(dt), v_BSGK.astype(dt),
                               preferred_element_type=jnp.float32)
        return out_BTGQK.reshape(B, T, N * K)

    def _prefix(self, k_BSGK, v_BSGK, mask_BTS, prefix_2PGK=None):
        """Prefix tuning: P learned key/value vectors per layer in front of the keys (no
        position encoding: they are what a cache would hold), visible to every query.
        `prefix_2PGK` (keys, values) is given when a projection computes them
        (lmx.models.prompt_encoders); else they are this layer's own `peft` variables."""
        B, _, G, K = k_BSGK.shape
        P = self.peft.num_prefix_tokens
        if prefix_2PGK is None:
            init = nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                (ax.RANK, ax.HEADS, ax.KV))
            key_PGK = self.variable(PEFT, "prefix_key",
                                    lambda: init(self.make_rng("params"), (P, G, K))).value
            value_PGK = self.variable(PEFT, "prefix_value",
                                      lambda: init(self.make_rng("params"), (P, G, K))).value
        else:
            key_PGK, value_PGK = prefix_2PGK[0], prefix_2PGK[1]
        expand = lambda x_PGK: jnp.broadcast_to(x_PGK, (B, P, G, K)).astype(k_BSGK.dtype)
        k_BSGK = jnp.concatenate([expand(key_PGK), k_BSGK], axis=1)
        v_BSGK = jnp.concatenate([expand(value_PGK), v_BSGK], axis=1)
        mask_BTS = jnp.pad(mask_BTS, ((0, 0), (0, 0), (P, 0)), constant_values=True)
        return k_BSGK, v_BSGK, mask_BTS

    def _cache(self, k_BTGK, v_BTGK, mask_BT, decode):
        """Writes this call's keys / values at the cache index; returns the whole cache and mask.

        Keys and values are stored as `cfg.kv_cache_dtype` (bfloat16 halves the cache)."""
        if decode not in DECODE_MODES:
            raise ValueError(f"decode={decode!r} is not one of {DECODE_MODES}")
        B, T, G, K = k_BTGK.shape  # at init, T is the cache length C
        zeros = lambda shape, dtype: lambda: jnp.zeros(shape, dtype)
        dtype = jnp.dtype(self.cfg.kv_cache_dtype)
        key_BCGK = self.variable(CACHE, "cached_key", zeros((B, T, G, K), dtype))
        value_BCGK = self.variable(CACHE, "cached_value", zeros((B, T, G, K), dtype))
        mask_BC = self.variable(CACHE, "mask", zeros((B, T), bool))
        index = self.variable(CACHE, "index", zeros((), jnp.int32))
        if self.is_initializing():
            return k_BTGK, v_BTGK, jnp.ones((B, T, T), bool)
        C, i = mask_BC.value.shape[1], index.value
        kv_axes = (ax.BATCH, ax.LENGTH, ax.HEADS, ax.KV)
        write = lambda cache, new: nn.with_logical_constraint(
            jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), (0, i, 0, 0)), kv_axes)
        key_BCGK.value = write(key_BCGK.value, k_BTGK)
        value_BCGK.value = write(value_BCGK.value, v_BTGK)
        mask_BC.value = jax.lax.dynamic_update_slice(mask_BC.value, mask_BT.astype(bool), (0, i))
        index.value = i + T
        slot_C, query_T = jnp.arange(C), i + jnp.arange(T)
        causal_TC = slot_C[None, :] <= query_T[:, None]
        if self.local:
            causal_TC = causal_TC & window_mask(query_T, slot_C, self.cfg.sliding_window)
        mask_BTC = mask_BC.value[:, None, :] & causal_TC[None]
        return key_BCGK.value, value_BCGK.value, mask_BTC


