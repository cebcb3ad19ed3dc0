"""Adapter arithmetic: HF PEFT's `add_weighted_adapter` on lmx LoRA adapters, jittable.

Axis legend: N adapters combined, L scanned layers, I/O in/out features, R LoRA rank.

Every combination PEFT 0.21 accepts, with its semantics (peft/tuners/lora/model.py and
peft/utils/merge_utils.py): `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`
combine A and B separately (weights `sqrt(|w * scale|)`, the sign on A's side); `cat` stacks
the ranks (A rows times `w * scale`); `svd`, `ties_svd`, `dare_linear_svd`, `dare_ties_svd`,
`magnitude_prune_svd` combine the full updates `scale * A @ B` and keep the top `svd_rank`
singular directions (B = U S, A = V^T, in PEFT's (O, I) orientation). The result has
`r = alpha = new rank` (scale 1, or sqrt(r) with rsLoRA, as PEFT's copied config gives),
targets the union of the adapters' modules and carries no task head. DARE drops each entry
with probability `1 - density` by `dare_mask` (keyed by module, adapter and tensor), so a
caller can reproduce the masks. A scanned model's stacked leaves (L, ...) combine layer by
layer, as PEFT does per module.
"""
from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
from flax import traverse_util

from lmx.adapters.mixed import SCANNED, Adapter

COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties",
                "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
_SAME_RANK = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")
_PARTS = {"a": 0, "b": 1, "delta": 2}


def dare_mask(key: jax.Array, module: str, adapter: int, part: str, shape, density: float
              ) -> jax.Array:
    """DARE's keep mask (Bernoulli(density)) for one tensor: `part` "a", "b" or "delta" of
    adapter number `adapter` at `module` (an lmx module path), in lmx's layout."""
    key = jax.random.fold_in(key, sum(ord(c) * 31 ** i for i, c in enumerate(module)) % 2 ** 31)
    key = jax.random.fold_in(jax.random.fold_in(key, adapter), _PARTS[part])
    return jax.random.bernoulli(key, density, shape).astype(jnp.float32)


def _magnitude_prune(x: jax.Array, density: float) -> jax.Array:
    k = int(density * x.size)
    if k <= 0:
        return jnp.zeros_like(x)
    _, top = jax.lax.top_k(jnp.abs(x).reshape(-1), k)
    return (x.reshape(-1) * jnp.zeros(x.size, x.dtype).at[top].set(1)).reshape(x.shape)


def _combine(tensors, weights_N, how: str, density, sign_method: str, masks) -> jax.Array:
    """PEFT's task_arithmetic / ties / dare_linear / dare_ties / magnitude_prune."""
    prune = {"linear": None, "svd": None, "ties": "magnitude", "magnitude_prune": "magnitude",
             "dare_linear": "random", "dare_ties": "random"}[how]
    if prune and density is None:
        raise ValueError(f"combination {how!r} needs a density in [0, 1]")
    if prune and density < 0:
        raise ValueError(f"density should be >= 0, got {density}")
    if prune == "magnitude" and density < 1:
        tensors = [_magnitude_prune(t, density) for t in tensors]
    elif prune == "random" and density < 1:
        tensors = [t * m / density for t, m in zip(tensors, masks)]
    stacked_N = jnp.stack(tensors)
    weighted_N = stacked_N * weights_N.reshape((-1,) + (1,) * (stacked_N.ndim - 1))
    if how not in ("ties", "dare_ties"):
        return weighted_N.sum(0)
    sign_N = jnp.sign(stacked_N)
    if sign_method not in ("total", "frequency"):
        raise ValueError(f"majority_sign_method={sign_method!r} is not 'total' or 'frequency'")
    magnitude = stacked_N.sum(0) if sign_method == "total" else sign_N.sum(0)
    keep_N = sign_N == jnp.where(magnitude >= 0, 1.0, -1.0)[None]
    return ((weighted_N * keep_N).sum(0)
            / jnp.maximum(keep_N.sum(0).astype(jnp.float32), 1.0))


def _svd(delta_IO: jax.Array, rank: int, clamp: float | None) -> tuple[jax.Array, jax.Array]:
    """Top-`rank` factors of an update, as PEFT takes them: SVD of the (O, I) matrix."""
    u_OK, s_K, vh_KI = jnp.linalg.svd(delta_IO.T, full_matrices=False)
    b_OR, a_RI = u_OK[:, :rank] * s_K[None, :rank], vh_KI[:rank]
    if clamp is not None:
        high = jnp.quantile(jnp.concatenate([b_OR.reshape(-1), a_RI.reshape(-1)]), clamp)
        b_OR, a_RI = jnp.clip(b_OR, -high, high), jnp.clip(a_RI, -high, high)
    return a_RI.T, b_OR.T


def _module(module, parts, weights, scales, ids, how, new_rank, density, sign_method,
            clamp, key):
    """The combined (A (I, R'), B (R', O)) of one 2-D module from its adapters' A and B."""
    mask = lambda n, part, shape: (dare_mask(key, module, n, part, shape, density)
                                   if how.startswith("dare") else None)
    w_N = jnp.asarray(weights, jnp.float32) * jnp.asarray(scales, jnp.float32)
    if how == "cat":
        a = jnp.concatenate([p["lora_a"] * w for p, w in zip(parts, w_N)], axis=1)
        b = jnp.concatenate([p["lora_b"] for p in parts], axis=0)
        pad = new_rank - a.shape[1]
        return jnp.pad(a, ((0, 0), (0, pad))), jnp.pad(b, ((0, pad), (0, 0)))
    if how.endswith("svd"):
        deltas = [s * p["lora_a"] @ p["lora_b"] for p, s in zip(parts, scales)]
        combined = _combine(deltas, jnp.asarray(weights, jnp.float32),
                            how.removesuffix("_svd") if how != "svd" else "svd", density,
                            sign_method, [mask(n, "delta", d.shape) for n, d in zip(ids, deltas)])
        return _svd(combined, new_rank, clamp)
    root = jnp.sqrt(jnp.abs(w_N))
    a = _combine([p["lora_a"] for p in parts], root * jnp.where(w_N >= 0, 1.0, -1.0), how,
                 density, sign_method, [mask(n, "a", p["lora_a"].shape)
                                        for n, p in zip(ids, parts)])
    b = _combine([p["lora_b"] for p in parts], root, how, density, sign_method,
                 [mask(n, "b", p["lora_b"].shape) for n, p in zip(ids, parts)])
    return a, b


def _new_rank(specs, how: str, svd_rank: int | None) -> int:
    ranks = [s.lora_rank for s in specs]
    if how in _SAME_RANK:
        if len(set(ranks)) != 1:
            raise ValueError(f"combination {how!r} needs adapters of one rank, got {ranks}")
        return ranks[0]
    return sum(ranks) if how == "cat" else (svd_rank or max(ranks))


def add_weighted_adapter(adapters: list[Adapter], weights: list[float], combination_type:
                         str = "svd", *, svd_rank: int | None = None,
                         svd_clamp: float | None = None, density: float | None = None,
                         majority_sign_method: str = "total",
                         key: jax.Array | None = None) -> Adapter:
    """A new LoRA adapter combining `adapters` with `weights`, as PEFT's method of the name.

    `key` seeds the DARE masks (`dare_mask`); traced `weights` are fine under jit."""
    if combination_type not in COMBINATIONS:
        raise ValueError(f"combination_type={combination_type!r} is not one of {COMBINATIONS}")
    if len(adapters) != len(weights):
        raise ValueError(f"{len(adapters)} adapters but {len(weights)} weights")
    specs = [a.spec for a in adapters]
    if any(not s.lora_rank or s.ia3_targets or s.adapter != "none" or s.num_prompt_tokens
           or s.num_prefix_tokens for s in specs):
        raise ValueError("add_weighted_adapter combines LoRA adapters only")
    if any(s.lora_dora or s.lora_rank_pattern or s.lora_alpha_pattern for s in specs):
        raise ValueError("add_weighted_adapter combines plain LoRA adapters: DoRA magnitudes and "
                         "per-module rank / alpha patterns are not combined here")
    if any(s.lora_init != "default" for s in specs):
        raise ValueError("add_weighted_adapter combines plain LoRA adapters: a PiSSA / OLoRA "
                         "adapter (lora_init) belongs to its own residual base; convert it "
                         "first (lmx.peft_init.as_plain_lora)")
    how = "linear" if len(adapters) == 1 else combination_type
    new_rank = _new_rank(specs, how, svd_rank)
    key = jax.random.key(0) if key is None else key
    targets = sorted(frozenset().union(*(s.lora_targets for s in specs)))
    flat = {}
    for module in targets:
        ids = [n for n, s in enumerate(specs) if module in s.lora_targets]
        parts = [_node(adapters[n].peft, module) for n in ids]
        args = ([weights[n] for n in ids], [specs[n].lora_scale for n in ids], ids, how,
                new_rank, density, majority_sign_method, svd_clamp)
        if _is_scanned(module):  # (L, ...) leaves: PEFT combines each layer's module alone
            layer_keys = jax.random.split(key, parts[0]["lora_a"].shape[0])
            a, b = jax.vmap(lambda ps, k, m=module, rest=args: _module(m, ps, *rest, k))(
                parts, layer_keys)
        else:
            a, b = _module(module, parts, *args, key)
        flat[tuple(module.split("/")) + ("lora_a",)] = a
        flat[tuple(module.split("/")) + ("lora_b",)] = b
    first = specs[0]
    spec = dataclasses.replace(first, lora_rank=new_rank, lora_alpha=float(new_rank),
                               lora_targets=frozenset(targets), head_in_peft=False)
    return Adapter(spec, traverse_util.unflatten_dict(flat))


def _is_scanned(module: str) -> bool:
    return module.split("/")[0] == SCANNED


def _node(peft: dict, module: str) -> dict:
    node = flax.core.unfreeze(peft)
    for name in module.split("/"):
        node = node[name]
    return {"lora_a": jnp.asarray(node["lora_a"]), "lora_b": jnp.asarray(node["lora_b"])}
