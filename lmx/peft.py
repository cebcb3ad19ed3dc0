"""What PEFT a model carries: one frozen, hashable spec shared by every model family.

PEFT parameters live in their own variable collection, `peft`, whose paths mirror
the modules they adapt (`peft/layer_0/attention/query/lora_a` next to
`params/layer_0/attention/query/kernel`); base `params` are never touched.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from lmx import paths, quant

PEFT = "peft"  # the variable collection
# Every linear layer of the encoder / decoder blocks (LoRA's strongest common setting).
ALL_LINEAR = (r"params/layer_\d+/(attention/(query|key|value|out)|mlp/(up|down))/kernel",)
METHODS = ("full", "lora", "houlsby", "pfeiffer", "bitfit", "prompt", "prefix", "ia3",
           "ln_tuning", "p_tuning")
# Every LayerNorm / RMSNorm gain (and bias) of the model: LN tuning's default trainables.
ALL_NORMS = r"params/(.*/)?[a-z_]*norm/(scale|bias)"
LORA_ALPHA = 16.0  # the defaults, here once (lmx/config.py's schema reads them)
# How LoRA's A and B start (PEFT's init_lora_weights): "default" (A Kaiming-uniform, B = 0),
# "pissa" (A, B from the top-r SVD of W, the residual left in the frozen base), "pissa_niter_K"
# (the same from a randomized SVD, K subspace iterations), "olora" (from the QR of W).
LORA_INITS = ("default", "pissa", "pissa_niter_K", "olora")
TOKEN_TABLE = "embed/token"  # the module path of the token embedding table (a LoRA target too)
ADAPTER_SIZE = 64


@dataclasses.dataclass(frozen=True)
class PeftSpec:
    """Static description of the PEFT modules a model builds (part of the jit key)."""
    lora_rank: int = 0
    lora_alpha: float = LORA_ALPHA
    lora_dropout: float = 0.0
    lora_rslora: bool = False
    lora_targets: frozenset[str] = frozenset()  # module paths, e.g. "layer_0/attention/query"
    lora_dora: bool = False  # DoRA: a learned magnitude per output feature (PEFT's use_dora)
    lora_init: str = "default"  # one of LORA_INITS (lmx.peft.init_from_base applies it)
    # Per-module rank / alpha where they differ from lora_rank / lora_alpha (PEFT's
    # rank_pattern / alpha_pattern, resolved to module paths): ((module path, value), ...)
    lora_rank_pattern: tuple[tuple[str, int], ...] = ()
    lora_alpha_pattern: tuple[tuple[str, float], ...] = ()
    adapter: str = "none"  # "none" | "houlsby" | "pfeiffer"
    adapter_size: int = ADAPTER_SIZE
    num_prompt_tokens: int = 0  # soft prompt tuning: P vectors before the input embeddings
    prompt_in_pooling: bool = False  # "cls" pooling takes the first virtual token (as HF PEFT)
    # P-tuning: the soft prompt is the output of this encoder ("mlp") of P learned vectors
    prompt_encoder: str = ""
    num_prefix_tokens: int = 0  # prefix tuning: P key/value vectors per attention layer
    prefix_projection: bool = False  # ... computed by PEFT's reparameterisation MLP
    encoder_hidden_size: int = 0  # those encoders' hidden width; 0: the width they encode
    ln_tuning: bool = False  # LN tuning: the base's norm gains / biases train (in `params`)
    ia3_targets: frozenset[str] = frozenset()  # IA3: learned scales on these modules' outputs
    ia3_feedforward: frozenset[str] = frozenset()  # ... or on their inputs (FFN down projections)
    head_in_peft: bool = False  # classifier at peft/head/classifier: each named adapter's own
    # QLoRA: these modules' frozen kernels are stored as `quantization` (lmx/quant.py)
    quantized: frozenset[str] = frozenset()
    quantization: quant.Scheme = quant.NONE

    @property
    def lora_scale(self) -> float:
        denominator = math.sqrt(self.lora_rank) if self.lora_rslora else self.lora_rank
        return self.lora_alpha / denominator

    def lora_rank_of(self, module_path: tuple[str, ...]) -> int:
        return dict(self.lora_rank_pattern).get("/".join(module_path), self.lora_rank)

    def lora_scale_of(self, module_path: tuple[str, ...]) -> float:
        """`alpha / r` (rsLoRA: `alpha / sqrt(r)`) with this module's own rank and alpha."""
        path = "/".join(module_path)
        rank = dict(self.lora_rank_pattern).get(path, self.lora_rank)
        alpha = dict(self.lora_alpha_pattern).get(path, self.lora_alpha)
        return alpha / (math.sqrt(rank) if self.lora_rslora else rank)

    def is_lora_target(self, module_path: tuple[str, ...]) -> bool:
        return self.lora_rank > 0 and "/".join(module_path) in self.lora_targets

    def quantized_kernel(self, module_path: tuple[str, ...]) -> quant.Scheme | None:
        """The storage scheme of this module's frozen kernel, None when it is plain."""
        return self.quantization if "/".join(module_path) in self.quantized else None

    def ia3_mode(self, module_path: tuple[str, ...]) -> str:
        """"input" or "output" scaling for an IA3 target module, "" when it is none."""
        path = "/".join(module_path)
        if path in self.ia3_feedforward:
            return "input"
        return "output" if path in self.ia3_targets else ""


NO_PEFT = PeftSpec()

# Default trainable parameters per method: regexes over `collection/module/.../name`.
DEFAULT_TRAINABLE = {
        "full": (r"params/.*",),
        "lora": (r"peft/.*", r"params/head/.*"),
        "houlsby": (r"peft/.*", r"params/head/.*"),
        "pfeiffer": (r"peft/.*", r"params/head/.*"),
        "bitfit": (r"params/.*bias", r"params/head/.*"),
        "prompt": (r"peft/.*", r"params/head/.*"),
        "prefix": (r"peft/.*", r"params/head/.*"),
        "ia3": (r"peft/.*", r"params/head/.*"),
        "ln_tuning": (ALL_NORMS, r"params/head/.*"),
        "p_tuning": (r"peft/.*", r"params/head/.*"),
}


def spec_from_config(peft_config: ml_collections.ConfigDict, base_params: Any) -> PeftSpec:
    """Builds the PeftSpec for `config.peft`, resolving LoRA target regexes on base params."""
    method = peft_config.method
    if method not in METHODS:
        raise ValueError(f"config.peft.method={method!r} is not one of {METHODS}")
    if method == "lora":
        kernel_paths = paths.select(
                base_params, peft_config.lora.targets, what="config.peft.lora.targets")
        # "params/layer_0/attention/query/kernel" -> module path "layer_0/attention/query"
        module_paths = frozenset(p.split("/", 1)[1].rsplit("/", 1)[0] for p in kernel_paths)
        check_lora_init(peft_config.lora.init, "config.peft.lora.init")
        return PeftSpec(
                lora_init=peft_config.lora.init,
                lora_rank=peft_config.lora.rank,
                lora_alpha=peft_config.lora.alpha,
                lora_dropout=peft_config.lora.dropout,
                lora_rslora=peft_config.lora.rslora,
                lora_targets=module_paths,
                lora_dora=peft_config.lora.dora,
                lora_rank_pattern=_pattern(peft_config.lora.rank_pattern, module_paths, int,
                                           "config.peft.lora.rank_pattern"),
                lora_alpha_pattern=_pattern(peft_config.lora.alpha_pattern, module_paths, float,
                                            "config.peft.lora.alpha_pattern"))
    if method in ("houlsby", "pfeiffer"):
        return PeftSpec(adapter=method, adapter_size=peft_config.adapter_size)
    if method == "prompt":
        return PeftSpec(num_prompt_tokens=peft_config.num_prompt_tokens)
    if method == "p_tuning":
        return PeftSpec(num_prompt_tokens=peft_config.num_prompt_tokens,
                        prompt_encoder=peft_config.prompt_encoder,
                        encoder_hidden_size=peft_config.encoder_hidden_size)
    if method == "prefix":
        return PeftSpec(num_prefix_tokens=peft_config.num_prompt_tokens,
                        prefix_projection=peft_config.prefix_projection,
                        encoder_hidden_size=peft_config.encoder_hidden_size)
    if method == "ln_tuning":
        return PeftSpec(ln_tuning=True)
    if method == "ia3":
        def modules(patterns, what):
            kernels = paths.select(base_params, patterns, what=what) if patterns else []
            return frozenset(p.split("/", 1)[1].rsplit("/", 1)[0] for p in kernels)
        feedforward = modules(peft_config.ia3.feedforward, "config.peft.ia3.feedforward")
        targets = modules(peft_config.ia3.targets, "config.peft.ia3.targets")
        return PeftSpec(ia3_targets=targets | feedforward, ia3_feedforward=feedforward)
    return NO_PEFT


def _pattern(rules, module_paths: frozenset[str], kind: type, what: str
             ) -> tuple[tuple[str, Any], ...]:
    """((module path, value), ...) for the LoRA targets a (regex over
    `params/<module>/kernel`, value) rule selects, first match wins; a rule that selects no
    target is an error naming it."""
    chosen, used = {}, set()
    for module in sorted(module_paths):
        for pattern, value in rules:
            if re.fullmatch(pattern, f"params/{module}/{weight_name(module)}"):
                chosen[module] = kind(value)
                used.add(pattern)
                break
    unused = [pattern for pattern, _ in rules if pattern not in used]
    if unused:
        raise ValueError(f"{what}: {unused} select no LoRA target (targets: "
                         f"{sorted(module_paths)[:4]}...)")
    return tuple(sorted(chosen.items()))


def scanned_spec(spec: PeftSpec, num_layers: int) -> PeftSpec:
    """`spec` (module paths of an unrolled model, `layer_N/...`) for the same model with its
    layers scanned: one shared block, `layers/block/...`. A module adapted in some layers but
    not in all cannot be expressed by one shared block: that is an error naming it."""
    def scanned(module_paths: frozenset[str], what: str) -> frozenset[str]:
        per_module: dict[str, set[int]] = {}
        out = set()
        for path in module_paths:
            match = re.fullmatch(r"layer_(\d+)/(.+)", path)
            if match is None:
                out.add(path)  # outside the blocks (e.g. the pooler): unchanged
                continue
            per_module.setdefault(match.group(2), set()).add(int(match.group(1)))
        for module, layers in sorted(per_module.items()):
            if layers != set(range(num_layers)):
                raise ValueError(
                    f"config.model.scan_layers=True shares one block across the {num_layers} "
                    f"layers, but {what} selects {module!r} in layers {sorted(layers)} only: "
                    "select it in every layer, or set config.model.scan_layers=False")
            out.add(f"layers/block/{module}")
        return frozenset(out)

    if spec.lora_init != "default":
        raise ValueError(f"config.peft.lora.init={spec.lora_init!r} decomposes each layer's own "
                         "kernel, which one block shared by scanned layers does not hold: set "
                         "config.model.scan_layers=False")
    if spec.lora_rank_pattern or spec.lora_alpha_pattern:
        raise ValueError("config.peft.lora.rank_pattern / alpha_pattern give modules their own "
                         "rank or alpha, which one block shared by scanned layers cannot hold: "
                         "set config.model.scan_layers=False")
    return dataclasses.replace(
        spec, lora_targets=scanned(spec.lora_targets, "config.peft.lora.targets"),
        ia3_targets=scanned(spec.ia3_targets, "config.peft.ia3"),
        ia3_feedforward=scanned(spec.ia3_feedforward, "config.peft.ia3.feedforward"))


def unscanned_spec(spec: PeftSpec, num_layers: int) -> PeftSpec:
    """Inverse of `scanned_spec`: `layers/block/X` -> `layer_N/X` for every layer."""
    def unrolled(module_paths: frozenset[str]) -> frozenset[str]:
        out = set()
        for path in module_paths:
            if path.startswith("layers/block/"):
                out |= {f"layer_{i}/{path[len('layers/block/'):]}" for i in range(num_layers)}
            else:
                out.add(path)
        return frozenset(out)

    return dataclasses.replace(spec, lora_targets=unrolled(spec.lora_targets),
                               ia3_targets=unrolled(spec.ia3_targets),
                               ia3_feedforward=unrolled(spec.ia3_feedforward))


def trainable_patterns(peft_config: ml_collections.ConfigDict, variables: Any = None
                       ) -> tuple[str, ...]:
    """The regexes of trainable leaves: `config.peft.trainable`, or the method's default
    (without its `params/head` part when `variables` has no head: a causal LM with tied
    embeddings predicts through the token table)."""
    if peft_config.trainable:
        return tuple(peft_config.trainable)
    patterns = DEFAULT_TRAINABLE[peft_config.method]
    if variables is not None and "head" not in variables.get("params", {}):
        patterns = tuple(p for p in patterns if not p.startswith("params/head/"))
    return patterns


def dora_norm(kernel: jax.Array, delta: jax.Array) -> jax.Array:
    """PEFT's DoRA weight norm: `||W + delta||_2` per output feature (over a Dense's I axis, a
    Conv's H, W, I axes), float32 and detached (DoRA paper section 4.3, as PEFT does)."""
    if delta.ndim == kernel.ndim + 1:  # a per-row (mixed-batch) update on a shared kernel
        kernel = kernel[None]
    axes = (0, 1, 2) if kernel.ndim == 4 else (-2,)
    weight = kernel.astype(jnp.float32) + jax.lax.stop_gradient(delta)
    return jax.lax.stop_gradient(jnp.sqrt(jnp.sum(jnp.square(weight), axis=axes)))


def lora_delta(peft_module: dict, scale: float):
    """`scale * A @ B` in the kernel's layout (Dense (I, O); Conv (H, W, I, O))."""
    a, b = peft_module["lora_a"], peft_module["lora_b"]
    if b.ndim == 3:  # a scanned model's Dense: (L, I, R) @ (L, R, O), one update per layer
        return scale * jnp.einsum("lir,lro->lio", a.astype(jnp.float32), b.astype(jnp.float32))
    b_RO = b.reshape(b.shape[-2], b.shape[-1])  # a Conv's B is a 1x1 kernel
    return scale * jnp.einsum("...r,ro->...o", a.astype(jnp.float32), b_RO.astype(jnp.float32))


def weight_name(module_path: str) -> str:
    """The leaf a LoRA target adapts: a Dense's `kernel` (I, O), the token table's
    `embedding` (V, D); both take `W + s A B` in the same layout."""
    return "embedding" if module_path == TOKEN_TABLE else "kernel"


def _lora_modules(variables: dict, spec: PeftSpec):
    """(module path, its `peft` node, its kernel) for every LoRA target."""
    params = traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]), sep="/")
    peft = flax.core.unfreeze(variables.get(PEFT, {}))
    for module_path in sorted(spec.lora_targets):
        node = peft
        for name in module_path.split("/"):
            node = node[name]
        yield module_path, node, params[f"{module_path}/{weight_name(module_path)}"]


def _magnitude_over_norm(magnitude: jax.Array, norm: jax.Array) -> jax.Array:
    """`m / ||W + dW||` laid out to scale a kernel's output axis (the last one)."""
    return (magnitude.astype(jnp.float32) / norm)[..., None, :]


def dora_norms(variables: dict, spec: PeftSpec) -> dict[str, jax.Array]:
    """`||W + s A B||` per DoRA target (module path -> (O,) or scanned (L, O)): what
    `unmerge_lora` needs to undo a DoRA merge (PEFT caches the same)."""
    return {path: dora_norm(kernel, lora_delta(node, spec.lora_scale_of(tuple(path.split("/")))))
            for path, node, kernel in _lora_modules(variables, spec)}


def _fold_lora(variables: dict, spec: PeftSpec, sign: float,
               norms: dict[str, jax.Array] | None = None) -> dict:
    params = traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]), sep="/")
    for module_path, node, kernel in _lora_modules(variables, spec):
        delta = lora_delta(node, spec.lora_scale_of(tuple(module_path.split("/"))))
        weight = kernel.astype(jnp.float32)
        if spec.lora_dora and sign > 0:  # W' = m / ||W + dW|| * (W + dW)
            weight = _magnitude_over_norm(node["lora_magnitude"], dora_norm(kernel, delta)) \
                * (weight + delta)
        elif spec.lora_dora:  # W = W' ||W + dW|| / m - dW, with the norm cached at merge
            weight = weight / _magnitude_over_norm(node["lora_magnitude"], norms[module_path]) \
                - delta
        else:
            weight = weight + sign * delta
        params[f"{module_path}/{weight_name(module_path)}"] = weight.astype(kernel.dtype)
    return traverse_util.unflatten_dict(params, sep="/")


def merge_lora(variables: dict, spec: PeftSpec) -> tuple[dict, PeftSpec]:
    """Base params with every LoRA update folded in, `W + (alpha / r) A B` (DoRA:
    `m / ||W + dW|| * (W + dW)`), and the spec without LoRA (other PEFT modules stay). The
    result's outputs equal the unmerged model's."""
    merged = {**variables, "params": _fold_lora(variables, spec, +1.0)}
    rest = _without_lora(variables.get(PEFT, {}))
    merged.pop(PEFT, None)
    if rest:
        merged[PEFT] = rest
    return merged, dataclasses.replace(spec, lora_rank=0, lora_targets=frozenset(),
                                       lora_dora=False, lora_rank_pattern=(),
                                       lora_alpha_pattern=(), lora_init="default")


def unmerge_lora(merged_variables: dict, lora_variables: dict, spec: PeftSpec,
                 norms: dict[str, jax.Array] | None = None) -> dict:
    """Inverse of merge_lora: subtracts the updates of `lora_variables[PEFT]` (LoRA spec
    `spec`). A DoRA merge cannot be undone from the merged kernel alone: pass
    `norms=dora_norms(unmerged_variables, spec)` taken before merging."""
    if spec.lora_dora and norms is None:
        raise ValueError("unmerge_lora of a DoRA spec needs norms=dora_norms(variables, spec) "
                         "from before the merge (||W + dW|| is not recoverable from W')")
    variables = {**merged_variables, PEFT: lora_variables[PEFT]}
    return {**variables, "params": _fold_lora(variables, spec, -1.0, norms)}


def _without_lora(tree: dict) -> dict:
    flat = traverse_util.flatten_dict(flax.core.unfreeze(tree))
    return traverse_util.unflatten_dict({k: v for k, v in flat.items()
                                         if k[-1] not in ("lora_a", "lora_b", "lora_magnitude")})


def _fold_ia3(variables: dict, spec: PeftSpec, invert: bool) -> dict:
    """IA3 scales folded into (or, `invert`, divided out of) their kernels, as PEFT merges:
    an output target scales W's output columns and its bias, a feed-forward target W's input
    rows. A scanned model's scales (L, F) fold into its stacked kernels (L, I, O)."""
    params = traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]), sep="/")
    flat_peft = traverse_util.flatten_dict(flax.core.unfreeze(variables[PEFT]), sep="/")
    for module_path in sorted(spec.ia3_targets):
        scale = flat_peft[f"{module_path}/ia3"].astype(jnp.float32)
        scale = 1.0 / scale if invert else scale
        kernel = params[f"{module_path}/kernel"]
        if module_path in spec.ia3_feedforward:  # (..., I) scales the input rows of (..., I, O)
            params[f"{module_path}/kernel"] = (kernel * scale[..., :, None]).astype(kernel.dtype)
            continue
        params[f"{module_path}/kernel"] = (kernel * scale[..., None, :]).astype(kernel.dtype)
        if f"{module_path}/bias" in params:
            bias = params[f"{module_path}/bias"]
            params[f"{module_path}/bias"] = (bias * scale).astype(bias.dtype)
    return traverse_util.unflatten_dict(params, sep="/")


def merge_ia3(variables: dict, spec: PeftSpec) -> tuple[dict, PeftSpec]:
    """Base params with every IA3 scale folded in, and the spec without IA3: the merged
    model's outputs equal the unmerged one's."""
    merged = {**variables, "params": _fold_ia3(variables, spec, invert=False)}
    flat = traverse_util.flatten_dict(flax.core.unfreeze(variables[PEFT]))
    rest = traverse_util.unflatten_dict({k: v for k, v in flat.items() if k[-1] != "ia3"})
    merged.pop(PEFT)
    if rest:
        merged[PEFT] = rest
    return merged, dataclasses.replace(spec, ia3_targets=frozenset(),
                                       ia3_feedforward=frozenset())


def unmerge_ia3(merged_variables: dict, ia3_variables: dict, spec: PeftSpec) -> dict:
    """Inverse of merge_ia3: divides the scales of `ia3_variables[PEFT]` back out."""
    variables = {**merged_variables, PEFT: ia3_variables[PEFT]}
    return {**variables, "params": _fold_ia3(variables, spec, invert=True)}


def check_lora_init(name: str, what: str) -> None:
    """A clear error for a LoRA init lmx does not have (LORA_INITS; K a positive integer)."""
    if name not in ("default", "pissa", "olora") and not re.fullmatch(r"pissa_niter_[1-9]\d*",
                                                                        name):
        raise ValueError(f"{what}={name!r} is not one of {LORA_INITS} (K a positive integer)")


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
