"""Beam search for lmx decoders with a KV cache, as transformers' `generate(num_beams=...)`
defines it (its vectorised `_beam_search`): per step the 2 * num_beams best continuations
of all beams, finished ones (EOS, or the length limit) scored `sum log p / length **
length_penalty` into a per-row list of num_beams hypotheses, the best num_beams unfinished
ones carried on with the cache rows reordered to follow them; `early_stopping` True, False
(transformers' heuristic) or "never". One jit per shape.

Axis legend: B batch, M beams, K = 2M candidates, T prompt length, N new tokens, V vocabulary.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmx.models.generate import init_cache, prompt_positions
from lmx.models.transformer import CACHE, Transformer

_NEG = -1.0e9  # transformers' "impossible" score


def _gather(x_BM_, index_BK):
    """x[b, index[b, k]] over the beam axis (any trailing axes)."""
    return jnp.take_along_axis(x_BM_, index_BK.reshape(index_BK.shape + (1,) * (x_BM_.ndim - 2)),
                               axis=1)


def _reorder_cache(cache, rows_R):
    """Every cache leaf with a leading (B * M) row axis, rows taken in `rows_R` order."""
    return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.take(x, rows_R, axis=0), cache)


@functools.partial(jax.jit, static_argnames=("module", "max_new_tokens", "num_beams",
                                             "length_penalty", "early_stopping", "eos_id",
                                             "pad_id"))
def beam_search(module: Transformer, variables: dict, ids_BT: jax.Array, mask_BT: jax.Array, *,
                max_new_tokens: int, num_beams: int, length_penalty: float = 1.0,
                early_stopping: bool | str = False, eos_id: int | None = None,
                pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
    """The best hypothesis per left-padded prompt: new tokens (B, N), `pad_id` after its end
    (EOS included), and its score (B,)."""
    if module.task != "causal_lm":
        raise ValueError(f"beam_search needs task='causal_lm', got {module.task!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping={early_stopping!r} is not True, False or 'never'")
    B, T = ids_BT.shape
    M, N, K = num_beams, max_new_tokens, 2 * num_beams
    spec = module.peft
    rows = lambda x_B_: jnp.repeat(x_B_, M, axis=0)  # (B * M, ...): beams of a row adjacent
    cache = init_cache(module, variables, B * M, spec.num_prompt_tokens + T + N)
    positions_RT = rows(prompt_positions(mask_BT) + spec.num_prefix_tokens)
    logits_RTV, state = module.apply({**variables, CACHE: cache}, rows(ids_BT), rows(mask_BT),
                                     positions_BT=positions_RT, decode="prefill",
                                     mutable=[CACHE])
    start_R = positions_RT[:, -1] + 1 + spec.num_prompt_tokens
    top_M = jnp.arange(K) < M  # candidates ranked in the first M may finish

    def step(carry):
        (i, cache, logits_RV, running_BMN, running_BM, done_BMN, done_score_BM, finished_BM,
         hopeful_B) = carry
        V = logits_RV.shape[-1]
        log_probs_BMV = jax.nn.log_softmax(logits_RV.astype(jnp.float32)).reshape(B, M, V)
        scores_BX = (log_probs_BMV + running_BM[:, :, None]).reshape(B, M * V)
        top_BK, index_BK = jax.lax.top_k(scores_BX, K)
        beam_BK, token_BK = index_BK // V, (index_BK % V).astype(jnp.int32)
        seqs_BKN = _gather(running_BMN, beam_BK).at[:, :, i].set(token_BK)
        hits_BK = jnp.broadcast_to(i + 1 >= N, (B, K))
        if eos_id is not None:
            hits_BK = hits_BK | (token_BK == eos_id)
        # the best M unfinished candidates run on
        live_BK = top_BK + hits_BK * _NEG
        next_BM = jax.lax.top_k(live_BK, M)[1]
        running_BMN, running_BM = _gather(seqs_BKN, next_BM), _gather(live_BK, next_BM)
        source_BM = _gather(beam_BK, next_BM)
        # finished candidates among the first M join the hypotheses if they score higher
        just_BK = hits_BK & top_M[None]
        final_BK = top_BK / (i + 1.0) ** length_penalty
        full_B1 = jnp.all(finished_BM, axis=1, keepdims=True) & (early_stopping is True)
        final_BK = final_BK + full_B1 * _NEG + (~hopeful_B[:, None]) * _NEG + (~just_BK) * _NEG
        merged_B = jnp.concatenate([done_score_BM, final_BK], axis=1)
        keep_BM = jax.lax.top_k(merged_B, M)[1]
        done_BMN = _gather(jnp.concatenate([done_BMN, seqs_BKN], axis=1), keep_BM)
        done_score_BM = _gather(merged_B, keep_BM)
        finished_BM = _gather(jnp.concatenate([finished_BM, just_BK], axis=1), keep_BM)
        # transformers' early-stop heuristic: can a running beam still beat the worst kept?
        length = float(N) if (early_stopping == "never" and length_penalty > 0.0) else i + 1.0
        best_B = running_BM[:, 0] / length ** length_penalty
        worst_BM = jnp.where(finished_BM, jnp.min(done_score_BM, axis=1, keepdims=True), _NEG)
        hopeful_B = hopeful_B & jnp.any(best_B[:, None] > worst_BM, axis=1)
        # one decoding step for the running beams, their cache rows reordered first
        rows_R = (jnp.arange(B)[:, None] * M + source_BM).reshape(B * M)
        cache = _reorder_cache(cache, rows_R)
        tokens_R = running_BMN[:, :, i].reshape(B * M)
        logits_R1V, state = module.apply(
            {**variables, CACHE: cache}, tokens_R[:, None], jnp.ones((B * M, 1), bool),
            positions_BT=(start_R + i)[:, None], decode="step", mutable=[CACHE])
        stop = (~jnp.any(hopeful_B) | (jnp.all(finished_BM) & (early_stopping is True))
                | jnp.all(hits_BK))
        return (jnp.where(stop, N, i + 1), state[CACHE], logits_R1V[:, 0], running_BMN,
                running_BM, done_BMN, done_score_BM, finished_BM, hopeful_B)

    running_BM = jnp.zeros((B, M), jnp.float32).at[:, 1:].set(_NEG)
    carry = (0, state[CACHE], logits_RTV[:, -1], jnp.full((B, M, N), pad_id, jnp.int32),
             running_BM, jnp.full((B, M, N), pad_id, jnp.int32), jnp.full((B, M), _NEG),
             jnp.zeros((B, M), bool), jnp.ones((B,), bool))
    out = jax.lax.while_loop(lambda c: c[0] < N, step, carry)
    return out[5][:, 0], out[6][:, 0]
