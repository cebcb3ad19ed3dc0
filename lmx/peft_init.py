"""PEFT weights computed from the frozen base once it is laid in: PiSSA / OLoRA's A, B and
residual base (PEFT's `pissa_init` / `olora_init`), their conversion to plain LoRA for the
original base, and DoRA's magnitude `||W + s A B||`.

Axis legend: I / O a Dense kernel's in / out features, R LoRA rank, K min(I, O).
"""
from __future__ import annotations

import dataclasses
import math

import flax
import jax
import jax.numpy as jnp
from flax import traverse_util

from lmx.peft import PEFT, TOKEN_TABLE, PeftSpec, dora_norms


def decompose(kernel_IO: jax.Array, rank: int, scale: float, how: str, key: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(A (I, R), B (R, O), residual W - s A B) of a Dense kernel as PEFT's `pissa_init` /
    `olora_init` make them, in float32. PiSSA: W^T = U S V^T, A = sqrt(S_r / s) V_r^T,
    B = U_r sqrt(S_r / s); OLoRA: W^T = Q R, A = R_r, B = Q_r (no 1 / s: s A B is not W's
    rank-r part, which the residual absorbs). `key` draws the randomized SVD's test matrix."""
    w_OI = kernel_IO.astype(jnp.float32).T
    if how == "olora":
        q_OK, r_KI = jnp.linalg.qr(w_OI)
        b_OR, a_RI = q_OK[:, :rank], r_KI[:rank]
    else:
        if how == "pissa":
            u_OK, s_K, vh_KI = jnp.linalg.svd(w_OI, full_matrices=False)
            u_OR, s_R, vh_RI = u_OK[:, :rank], s_K[:rank], vh_KI[:rank]
        else:
            u_OR, s_R, vh_RI = svd_lowrank(w_OI, rank, int(how.rsplit("_", 1)[1]), key)
        root_R = jnp.sqrt(s_R / scale)
        a_RI, b_OR = root_R[:, None] * vh_RI, u_OR * root_R[None, :]
    residual_OI = w_OI - scale * (b_OR @ a_RI)
    return a_RI.T, b_OR.T, residual_OI.T.astype(kernel_IO.dtype)


def svd_lowrank(m_OI: jax.Array, rank: int, niter: int, key: jax.Array):
    """Halko et al.'s randomized rank-r SVD with `niter` subspace iterations, the algorithm of
    torch.svd_lowrank (q = rank, no oversampling): (U (O, R), S (R,), V^T (R, I))."""
    q_OR = jnp.linalg.qr(m_OI @ jax.random.normal(key, (m_OI.shape[1], rank)))[0]
    for _ in range(niter):
        q_IR = jnp.linalg.qr(m_OI.T @ q_OR)[0]
        q_OR = jnp.linalg.qr(m_OI @ q_IR)[0]
    u_RR, s_R, vh_RI = jnp.linalg.svd(q_OR.T @ m_OI, full_matrices=False)
    return q_OR @ u_RR, s_R, vh_RI


def initial_lora(variables: dict, spec: PeftSpec, key: jax.Array | None = None
                 ) -> tuple[dict, dict]:
    """`spec.lora_init` applied to the base in `variables`: (params with each target's kernel
    replaced by its residual, {module path: {"lora_a", "lora_b"}} at init). The token table
    keeps the default init (PEFT's Embedding has no PiSSA / OLoRA). Deterministic: the
    randomized SVD draws from `key` (default key(0)) folded with the module's index."""
    if spec.lora_init == "default":
        return variables["params"], {}
    if spec.quantized or spec.lora_dora:
        raise ValueError(f"config.peft.lora.init={spec.lora_init!r} is not built for "
                         f"{'a quantized base' if spec.quantized else 'DoRA'}: the "
                         "decomposition needs float kernels and plain LoRA")
    key = jax.random.key(0) if key is None else key
    params = traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]), sep="/")
    initial = {}
    for index, module_path in enumerate(sorted(spec.lora_targets - {TOKEN_TABLE})):
        kernel = params[f"{module_path}/kernel"]
        if kernel.ndim != 2:
            raise ValueError(f"config.peft.lora.init={spec.lora_init!r}: {module_path}'s kernel "
                             f"{kernel.shape} is not a Dense (I, O) kernel (scanned or Conv)")
        path = tuple(module_path.split("/"))
        a, b, residual = decompose(kernel, spec.lora_rank_of(path), spec.lora_scale_of(path),
                                   spec.lora_init, jax.random.fold_in(key, index))
        params[f"{module_path}/kernel"] = jax.device_put(residual,
                                                         getattr(kernel, "sharding", None))
        initial[module_path] = {"lora_a": a, "lora_b": b}
    return traverse_util.unflatten_dict(params, sep="/"), initial


def as_plain_lora(peft_vars: dict, initial: dict, spec: PeftSpec) -> tuple[dict, PeftSpec]:
    """A PiSSA / OLoRA adapter as plain LoRA on the ORIGINAL base (PEFT's
    `path_initial_model_for_weight_conversion`): s A B - s A0 B0 = s' [A | A0] [B ; -B0] with
    rank 2r and s' = s (alpha 2x, rsLoRA sqrt(2)x). `initial` is `initial_lora`'s second
    output (or the `peft` tree at init)."""
    if spec.lora_rslora and (spec.lora_rank_pattern or spec.lora_alpha_pattern):
        raise ValueError("converting a PiSSA / OLoRA adapter with rsLoRA and rank / alpha "
                         "patterns is not supported (nor by PEFT)")
    flat = traverse_util.flatten_dict(flax.core.unfreeze(peft_vars), sep="/")
    for module_path in sorted(spec.lora_targets - {TOKEN_TABLE}):
        start = initial[module_path]
        flat[f"{module_path}/lora_a"] = jnp.concatenate(
            [flat[f"{module_path}/lora_a"], start["lora_a"]], axis=-1)
        flat[f"{module_path}/lora_b"] = jnp.concatenate(
            [flat[f"{module_path}/lora_b"], -start["lora_b"]], axis=0)
    if TOKEN_TABLE in spec.lora_targets:
        raise ValueError("as_plain_lora: the token table's LoRA starts at the default init; "
                         "doubling its rank is not built")
    factor = math.sqrt(2.0) if spec.lora_rslora else 2.0
    plain = dataclasses.replace(
        spec, lora_init="default", lora_rank=2 * spec.lora_rank,
        lora_alpha=factor * spec.lora_alpha,
        lora_rank_pattern=tuple((p, 2 * r) for p, r in spec.lora_rank_pattern),
        lora_alpha_pattern=tuple((p, 2 * a) for p, a in spec.lora_alpha_pattern))
    return traverse_util.unflatten_dict(flat, sep="/"), plain


def init_from_base(variables: dict, spec: PeftSpec) -> dict:
    """`variables` with the PEFT state that depends on the base weights recomputed from the
    base now in them (a model is initialised before pretrained weights are laid in): PiSSA /
    OLoRA's A, B and residual base (`initial_lora`), DoRA's magnitude `||W + s A B||` per
    output feature, as PEFT's `update_layer` sets it."""
    if spec.lora_init != "default":
        params, initial = initial_lora(variables, spec)
        flat = traverse_util.flatten_dict(flax.core.unfreeze(variables[PEFT]), sep="/")
        for path, leaves in initial.items():
            for name, value in leaves.items():
                old = flat[f"{path}/{name}"]
                flat[f"{path}/{name}"] = jax.device_put(value.astype(old.dtype),
                                                        getattr(old, "sharding", None))
        variables = {**variables, "params": params,
                     PEFT: traverse_util.unflatten_dict(flat, sep="/")}
    if not spec.lora_dora:
        return variables
    flat = traverse_util.flatten_dict(flax.core.unfreeze(variables[PEFT]), sep="/")
    for path, norm in dora_norms(variables, spec).items():
        old = flat[f"{path}/lora_magnitude"]
        flat[f"{path}/lora_magnitude"] = jax.device_put(
            norm.astype(old.dtype), getattr(old, "sharding", None))
    return {**variables, PEFT: traverse_util.unflatten_dict(flat, sep="/")}
