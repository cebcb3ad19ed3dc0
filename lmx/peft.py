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
    lora_init: str = "default"  # one of LORA_INITS (lmx.peft_init.init_from_base applies it)
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
    if peft_config.method == "bitfit" and variables is not None and not any(
            re.fullmatch(patterns[0], path) for path in paths.flatten(variables)):
        raise ValueError("config.peft.method='bitfit' trains bias parameters, but this model "
                         "has no bias parameters (bias-free linear layers and RMSNorm, as in "
                         "Llama-style decoders): choose another method")
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
