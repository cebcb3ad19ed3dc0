"""Are the attributions faithful? ERASER's AOPC comprehensiveness and sufficiency
(DeYoung et al. 2020) and the model-randomisation sanity check (Adebayo et al. 2018).

Tokens are deleted through the attention mask (the model no longer sees them; [CLS]-style
special tokens are never deleted). `fractions` are ERASER's bins; k = ceil(fraction * n).

Axis legend: B batch, T tokens, D width, K deletion fractions, L labels.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmx.explain.target import target_prob

FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)


def top_tokens(scores_BT, candidate_BT, fractions: tuple[float, ...]) -> jax.Array:
    """(K, B, T) bool: the ceil(f n) highest-scoring candidate tokens, per fraction f."""
    ranked_BT = jnp.where(candidate_BT, scores_BT, -jnp.inf)
    rank_BT = jnp.argsort(jnp.argsort(-ranked_BT, axis=-1, stable=True), axis=-1)
    n_B = candidate_BT.sum(-1)
    k_KB = jnp.ceil(jnp.asarray(fractions)[:, None] * n_B[None]).astype(jnp.int32)
    return (rank_BT[None] < k_KB[..., None]) & candidate_BT[None]


def aopc(logit_fn, context: dict, embeds_BTD, target_B, scores_BT, candidate_BT, *,
         fractions: tuple[float, ...] = FRACTIONS) -> tuple[jax.Array, jax.Array]:
    """Per-example AOPC comprehensiveness (p(x) - p(x minus top-k)) and sufficiency
    (p(x) - p(top-k only)), averaged over `fractions`. Higher comp, lower suff = better."""
    mask_BT = context["mask"]
    full_B = target_prob(logit_fn, context, embeds_BTD, target_B)
    top_KBT = top_tokens(scores_BT, candidate_BT, fractions)

    def prob_with(keep_BT):
        return target_prob(logit_fn, {**context, "mask": keep_BT}, embeds_BTD, target_B)

    def both(top_BT):
        without = prob_with(mask_BT & ~top_BT)
        only = prob_with((mask_BT & ~candidate_BT) | top_BT)
        return full_B - without, full_B - only

    comp_KB, suff_KB = jax.lax.map(both, top_KBT)
    return comp_KB.mean(0), suff_KB.mean(0)


aopc_jit = jax.jit(aopc, static_argnums=0, static_argnames="fractions")


def spearman(a_BT, b_BT, valid_BT) -> jax.Array:
    """Per-example Spearman rank correlation over the valid positions (ties broken by order)."""
    def ranks(x_BT):
        x_BT = jnp.where(valid_BT, x_BT, jnp.inf)  # invalid last
        return jnp.argsort(jnp.argsort(x_BT, axis=-1, stable=True), axis=-1).astype(jnp.float32)

    n_B = jnp.maximum(valid_BT.sum(-1).astype(jnp.float32), 2.0)
    mean_B = (n_B - 1) / 2
    ra_BT, rb_BT = ranks(a_BT) - mean_B[:, None], ranks(b_BT) - mean_B[:, None]
    ra_BT, rb_BT = jnp.where(valid_BT, ra_BT, 0.0), jnp.where(valid_BT, rb_BT, 0.0)
    denominator_B = jnp.sqrt((ra_BT ** 2).sum(-1) * (rb_BT ** 2).sum(-1))
    return (ra_BT * rb_BT).sum(-1) / jnp.maximum(denominator_B, 1e-12)


def reinit_top_layers(module, variables: dict, num_layers: int, key: jax.Array,
                      *dummy_inputs) -> dict:
    """`variables` with the head and the top `num_layers` `layer_i` re-initialised (Adebayo's
    cascading model randomisation, one step)."""
    fresh = nn.unbox(jax.jit(module.init)(key, *dummy_inputs))["params"]
    layers = sorted((k for k in variables["params"] if k.startswith("layer_")),
                    key=lambda k: int(k.split("_")[1]))
    replaced = set(layers[len(layers) - num_layers:]) | {"head"}
    params = {k: (fresh[k] if k in replaced else v) for k, v in variables["params"].items()}
    return {**variables, "params": params}


def table_markdown(rows: dict[str, dict[str, float]], columns: tuple[str, ...]) -> str:
    """explainer x metric, one row per explainer."""
    lines = ["| explainer | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        cells = [f"{values[c]:.4f}" if isinstance(values.get(c), float) else str(values.get(c, ""))
                 for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(per_example: dict[str, Any]) -> dict[str, float]:
    """Means of per-example arrays (host floats)."""
    return {k: float(np.mean(np.asarray(v))) for k, v in per_example.items()}


@functools.partial(jax.jit, static_argnums=0)
def random_scores(shape: tuple[int, ...], key: jax.Array) -> jax.Array:
    return jax.random.uniform(key, shape)
