"""Attention rollout and attention flow (Abnar & Zuidema 2020) for encoders and decoders.

Both read the attention probabilities the Transformer sows (`intermediates/layer_i/attention/
attention_probs`), average the heads, add the residual path (0.5 A + 0.5 I) and then
multiply the layers (rollout, jitted) or solve a max-flow per input token (flow: a
combinatorial algorithm, run on the host with scipy's integer max-flow).

Axis legend: B batch, N layers, G kv heads, Q query heads per group, T query tokens,
S key tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

FLOW_SCALE = 1_000_000  # capacities to integers (scipy's max-flow is integral)


@jax.jit(static_argnums=0)
def attention_maps(module, variables, ids_BT, mask_BT, token_types_BT) -> jax.Array:
    """Head-averaged attention probabilities of every layer, (N, B, T, S)."""
    _, state = module.apply(variables, ids_BT, mask_BT, token_types_BT,
                            mutable=["intermediates"])
    layers = state["intermediates"]
    num_layers = len([k for k in layers if k.startswith("layer_")])
    probs = [layers[f"layer_{i}"]["attention"]["attention_probs"][0] for i in range(num_layers)]
    return jnp.stack([p_BGQTS.mean(axis=(1, 2)) for p_BGQTS in probs])


def with_residual(maps_NBTS: jax.Array) -> jax.Array:
    """0.5 A + 0.5 I, rows renormalised (they already sum to 1; this guards padding rows)."""
    eye_TS = jnp.eye(maps_NBTS.shape[-1], dtype=maps_NBTS.dtype)
    mixed_NBTS = 0.5 * maps_NBTS + 0.5 * eye_TS[None, None]
    return mixed_NBTS / mixed_NBTS.sum(-1, keepdims=True)


@jax.jit
def rollout(maps_NBTS: jax.Array) -> jax.Array:
    """R = A_N ... A_1 (with residuals): row t says how much each input token reaches t."""
    def step(r_BTS, a_BTS):
        return jnp.einsum("bts,bsu->btu", a_BTS, r_BTS), None

    mixed_NBTS = with_residual(maps_NBTS)
    eye_BTS = jnp.broadcast_to(jnp.eye(mixed_NBTS.shape[-1]), mixed_NBTS.shape[1:])
    r_BTS, _ = jax.lax.scan(step, eye_BTS, mixed_NBTS)
    return r_BTS


def output_weights(mask_BT: np.ndarray, pooling: str) -> np.ndarray:
    """Which output positions the head reads: [CLS], the real tokens (mean) or the last one."""
    mask_BT = np.asarray(mask_BT).astype(np.float32)
    if pooling == "cls":
        weights_BT = np.zeros_like(mask_BT)
        weights_BT[:, 0] = 1.0
    elif pooling == "mean":
        weights_BT = mask_BT
    elif pooling == "last":
        weights_BT = np.zeros_like(mask_BT)
        weights_BT[np.arange(len(mask_BT)), np.maximum(mask_BT.sum(-1).astype(int) - 1, 0)] = 1.0
    else:
        raise ValueError(f"pooling={pooling!r} is not 'cls', 'mean' or 'last'")
    return weights_BT / np.maximum(weights_BT.sum(-1, keepdims=True), 1.0)


def rollout_scores(maps_NBTS, mask_BT, pooling: str) -> jax.Array:
    """Per-input-token relevance of the pooled output: the pooled rows of the rollout."""
    weights_BT = jnp.asarray(output_weights(mask_BT, pooling))
    return jnp.einsum("bt,bts->bs", weights_BT, rollout(maps_NBTS))


def _flow_graph(mixed_NTS: np.ndarray, sinks_T: np.ndarray) -> csr_matrix:
    """Nodes: layer n position t -> n*T + t (n = 0 the inputs), then one super-sink."""
    num_layers, T, _ = mixed_NTS.shape
    sink = (num_layers + 1) * T
    rows, cols, caps = [], [], []
    for n in range(num_layers):
        t_idx, s_idx = np.nonzero(np.ones((T, T)))
        rows.append(n * T + s_idx)  # edge from input s of layer n to output t
        cols.append((n + 1) * T + t_idx)
        caps.append(np.rint(mixed_NTS[n][t_idx, s_idx] * FLOW_SCALE))
    rows.append(num_layers * T + np.flatnonzero(sinks_T))
    cols.append(np.full(int(sinks_T.sum()), sink))
    caps.append(np.full(int(sinks_T.sum()), 2**30))
    return csr_matrix((np.concatenate(caps).astype(np.int32),
                       (np.concatenate(rows), np.concatenate(cols))), shape=(sink + 1, sink + 1))


def flow_scores(maps_NBTS, mask_BT, pooling: str) -> np.ndarray:
    """Max-flow from each input token to the positions the head reads, (B, S), in [0, 1]."""
    mixed_NBTS = np.asarray(with_residual(maps_NBTS), np.float64)
    mask_BT = np.asarray(mask_BT).astype(bool)
    sinks_BT = output_weights(mask_BT, pooling) > 0
    num_layers, B, T, _ = mixed_NBTS.shape
    scores_BS = np.zeros((B, T))
    for b in range(B):
        graph = _flow_graph(mixed_NBTS[:, b], sinks_BT[b])
        for s in np.flatnonzero(mask_BT[b]):
            result = maximum_flow(graph, int(s), (num_layers + 1) * T)
            scores_BS[b, s] = result.flow_value / FLOW_SCALE
    return scores_BS / np.maximum(sinks_BT.sum(-1, keepdims=True), 1)
