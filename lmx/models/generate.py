"""Autoregressive generation for lmx decoders with a KV cache: greedy, temperature, top-k,
top-p; EOS and max-length handling; batches with left padding. One jit per shape.

Axis legend: B batch, T prompt length, N new tokens, C cache length (T + N, plus the soft
prompt), V vocabulary.

Positions follow transformers' `generate`: for a left-padded prompt, position = number of
real tokens before it (pads sit at 1), continuing one by one; a PEFT prefix or soft prompt
shifts real tokens by its length, as PEFT does.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmx.models.transformer import CACHE, Transformer


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_k 0 and top_p 1.0 keep every token."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0


def prompt_positions(mask_BT: jax.Array) -> jax.Array:
    """transformers' positions for a left-padded prompt: cumsum(mask) - 1, pads at 1."""
    mask_BT = mask_BT.astype(jnp.int32)
    return jnp.where(mask_BT == 1, jnp.cumsum(mask_BT, axis=1) - 1, 1)


def filter_logits(logits_BV: jax.Array, sampling: Sampling) -> jax.Array:
    """Temperature, then top-k, then top-p (nucleus; at least one token always survives)."""
    logits_BV = logits_BV.astype(jnp.float32) / sampling.temperature
    very_negative = jnp.finfo(jnp.float32).min
    if sampling.top_k:
        kth_B1 = jax.lax.top_k(logits_BV, sampling.top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, very_negative, logits_BV)
    if sampling.top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        cumulative_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
        # keep a token while the mass before it is < top_p
        keep_BV = (cumulative_BV - jax.nn.softmax(sorted_BV, axis=-1)) < sampling.top_p
        threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < threshold_B1, very_negative, logits_BV)
    return logits_BV


def next_token(logits_BV: jax.Array, sampling: Sampling, rng: jax.Array) -> jax.Array:
    if sampling.temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits_BV, sampling)).astype(jnp.int32)


def init_cache(module: Transformer, variables: dict, batch: int, length: int) -> dict:
    """Zeroed cache for `batch` rows of `length` slots (abstract init: no forward pass)."""
    ids_BC = jnp.zeros((batch, length), jnp.int32)
    shapes = jax.eval_shape(
        lambda: module.init(jax.random.key(0), ids_BC, positions_BT=ids_BC, decode="prefill"))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nn.unbox(shapes[CACHE]))


@functools.partial(jax.jit, static_argnames=("module", "max_new_tokens", "eos_id", "pad_id",
                                             "sampling"))
def generate(module: Transformer, variables: dict, ids_BT: jax.Array, mask_BT: jax.Array, *,
             max_new_tokens: int, eos_id: int | None = None, pad_id: int = 0,
             sampling: Sampling = Sampling(), rng: jax.Array | None = None) -> jax.Array:
    """New tokens (B, N) after left-padded prompts; rows that emitted `eos_id` get `pad_id`.

    `module` must be a causal-LM Transformer; `variables` its params (+ peft)."""
    if module.task != "causal_lm":
        raise ValueError(f"generate needs task='causal_lm', got {module.task!r}")
    B, T = ids_BT.shape
    rng = jax.random.key(0) if rng is None else rng
    spec = module.peft
    cache = init_cache(module, variables, B, spec.num_prompt_tokens + T + max_new_tokens)
    positions_BT = prompt_positions(mask_BT) + spec.num_prefix_tokens
    logits_BTV, state = module.apply({**variables, CACHE: cache}, ids_BT, mask_BT,
                                     positions_BT=positions_BT, decode="prefill",
                                     mutable=[CACHE])
    next_position_B = positions_BT[:, -1] + 1 + spec.num_prompt_tokens

    def step(carry):
        i, cache, logits_BV, position_B, done_B, out_BN, rng = carry
        rng, key = jax.random.split(rng)
        token_B = jnp.where(done_B, pad_id, next_token(logits_BV, sampling, key))
        out_BN = out_BN.at[:, i].set(token_B)
        if eos_id is not None:
            done_B = done_B | (token_B == eos_id)
        logits_B1V, state = module.apply(
            {**variables, CACHE: cache}, token_B[:, None], jnp.ones((B, 1), bool),
            positions_BT=position_B[:, None], decode="step", mutable=[CACHE])
        return i + 1, state[CACHE], logits_B1V[:, 0], position_B + 1, done_B, out_BN, rng

    def not_finished(carry):
        i, done_B = carry[0], carry[4]
        return (i < max_new_tokens) & ~jnp.all(done_B)

    out_BN = jnp.full((B, max_new_tokens), pad_id, jnp.int32)
    carry = (0, state[CACHE], logits_BTV[:, -1], next_position_B, jnp.zeros((B,), bool),
             out_BN, rng)
    return jax.lax.while_loop(not_finished, step, carry)[5]


def full_recompute_greedy(module: Transformer, variables: dict[str, Any], ids_BT: jax.Array,
                          mask_BT: jax.Array, max_new_tokens: int) -> jax.Array:
    """Reference greedy decoding without a cache, one full forward per token: for tests.

    The sequence has its final length from the start; slots not generated yet are masked
    out (causal attention never looks right, so they change nothing)."""
    B, T = ids_BT.shape
    ids_BS = jnp.pad(ids_BT, ((0, 0), (0, max_new_tokens)))
    mask_BS = jnp.pad(mask_BT, ((0, 0), (0, max_new_tokens)))
    forward = jax.jit(lambda ids, mask: module.apply(
        variables, ids, mask, positions_BT=prompt_positions(mask) + module.peft.num_prefix_tokens))
    for i in range(max_new_tokens):
        token_B = jnp.argmax(forward(ids_BS, mask_BS)[:, T + i - 1], axis=-1).astype(jnp.int32)
        ids_BS = ids_BS.at[:, T + i].set(token_B)
        mask_BS = mask_BS.at[:, T + i].set(1)
    return ids_BS[:, T:]
