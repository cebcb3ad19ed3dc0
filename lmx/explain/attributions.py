"""Gradient and perturbation attributions for any logit function of an input array.

Every method takes `(logit_fn, context, x_BX, target_B, ...)` where `logit_fn(context, x_BX)`
returns logits (see `target.py`) and returns an attribution shaped like `x_BX` (occlusion:
one score per mask). Pure functions: jit them with `logit_fn` static (`jitted`).

Axis legend: B batch, X the input's own axes (T D for text embeddings, H W C for images),
S integration steps or noise samples, M occlusion masks, T tokens, D width, H/W/C image axes.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lmx.explain.target import target_logit

RULES = ("gausslegendre", "riemann_middle", "riemann_trapezoid")


def _sum_but_batch(x_BX: jax.Array) -> jax.Array:
    return x_BX.reshape(x_BX.shape[0], -1).sum(-1)


def gradient(logit_fn, context: Any, x_BX: jax.Array, target_B: jax.Array) -> jax.Array:
    """d logit[target] / d x, per example (examples do not interact in eval mode)."""
    return jax.grad(lambda x: target_logit(logit_fn, context, x, target_B).sum())(x_BX)


def saliency(logit_fn, context, x_BX, target_B) -> jax.Array:
    """Simonyan et al. 2014: the raw gradient (reduce with a norm for a per-token score)."""
    return gradient(logit_fn, context, x_BX, target_B)


def grad_x_input(logit_fn, context, x_BX, target_B) -> jax.Array:
    return gradient(logit_fn, context, x_BX, target_B) * x_BX


def integration_rule(steps: int, rule: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Points alpha_S in [0, 1] and weights w_S with sum_s w_s g(alpha_s) ~ int_0^1 g."""
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    if rule == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    if rule == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return alphas, weights
    raise ValueError(f"rule={rule!r} is not one of {RULES}")


class IntegratedGradients(NamedTuple):
    attribution: jax.Array  # like x_BX
    gap_B: jax.Array  # sum(attribution) - (f(x) - f(baseline)): the completeness gap
    delta_B: jax.Array  # f(x) - f(baseline)


def integrated_gradients(logit_fn, context, x_BX, target_B, baseline_BX, *, steps: int = 64,
                         rule: str = "gausslegendre", step_batch: int = 0
                         ) -> IntegratedGradients:
    """Sundararajan et al. 2017; the steps are vmapped (`step_batch` at a time; 0 = all)."""
    alphas_S, weights_S = (jnp.asarray(a, jnp.float32) for a in integration_rule(steps, rule))
    diff_BX = x_BX - baseline_BX

    def grad_at(alpha):
        return gradient(logit_fn, context, baseline_BX + alpha * diff_BX, target_B)

    grads_SBX = jax.lax.map(grad_at, alphas_S, batch_size=step_batch or steps)
    mean_grad_BX = jnp.tensordot(weights_S, grads_SBX, axes=1)
    attribution_BX = diff_BX * mean_grad_BX
    delta_B = (target_logit(logit_fn, context, x_BX, target_B)
               - target_logit(logit_fn, context, baseline_BX, target_B))
    return IntegratedGradients(attribution_BX, _sum_but_batch(attribution_BX) - delta_B, delta_B)


def smoothgrad(logit_fn, context, x_BX, target_B, key: jax.Array, *, samples: int = 16,
               noise: float = 0.1, sample_batch: int = 0) -> jax.Array:
    """Smilkov et al. 2017: the gradient averaged over x + N(0, (noise * range(x))^2)."""
    flat_BX = x_BX.reshape(x_BX.shape[0], -1)
    sigma_B = noise * (flat_BX.max(-1) - flat_BX.min(-1))
    sigma_BX = sigma_B.reshape((-1,) + (1,) * (x_BX.ndim - 1))

    def grad_at(k):
        noisy_BX = x_BX + sigma_BX * jax.random.normal(k, x_BX.shape, x_BX.dtype)
        return gradient(logit_fn, context, noisy_BX, target_B)

    grads_SBX = jax.lax.map(grad_at, jax.random.split(key, samples),
                            batch_size=sample_batch or samples)
    return grads_SBX.mean(0)


def occlusion(logit_fn, context, x_BX, target_B, baseline_BX, masks_MX: jax.Array, *,
              mask_batch: int = 0) -> jax.Array:
    """Zeiler & Fergus 2014 / leave-one-out: drop_BM = f(x) - f(x with mask m set to baseline).

    `masks_MX` (bool) broadcasts against one example (e.g. `token_masks`, `patch_masks`).
    """
    full_B = target_logit(logit_fn, context, x_BX, target_B)

    def drop_for(mask_X):
        occluded_BX = jnp.where(mask_X[None], baseline_BX, x_BX)
        return full_B - target_logit(logit_fn, context, occluded_BX, target_B)

    drops_MB = jax.lax.map(drop_for, masks_MX, batch_size=mask_batch or masks_MX.shape[0])
    return drops_MB.T


def token_masks(num_tokens: int) -> jax.Array:
    """One mask per token over (T, D): leave-one-out."""
    return jnp.eye(num_tokens, dtype=bool)[:, :, None]


def patch_masks(height: int, width: int, patch: int) -> jax.Array:
    """Non-overlapping `patch` x `patch` squares over (H, W, C)."""
    rows, cols = -(-height // patch), -(-width // patch)
    h_H, w_W = jnp.arange(height) // patch, jnp.arange(width) // patch
    index_HW = h_H[:, None] * cols + w_W[None, :]
    return (index_HW[None] == jnp.arange(rows * cols)[:, None, None])[..., None]


def spread(drops_BM: jax.Array, masks_MX: jax.Array) -> jax.Array:
    """Occlusion drops back onto the input grid (each cell: the mean drop of masks covering it)."""
    masks = masks_MX.astype(jnp.float32)
    covered = jnp.maximum(masks.sum(0), 1.0)
    return jnp.tensordot(drops_BM, masks, axes=1) / covered[None]


def token_scores(attribution_BTD: jax.Array, how: str) -> jax.Array:
    """Per-token score: `sum` over width (signed: grad x input, IG) or L2 `norm` (saliency)."""
    if how == "sum":
        return attribution_BTD.sum(-1)
    if how == "norm":
        return jnp.linalg.norm(attribution_BTD, axis=-1)
    raise ValueError(f"how={how!r} is not 'sum' or 'norm'")


@functools.lru_cache(maxsize=None)
def jitted(method, **static):
    """`method` jitted with its logit function (first argument) and keyword options static."""
    return jax.jit(functools.partial(method, **static), static_argnums=0)
