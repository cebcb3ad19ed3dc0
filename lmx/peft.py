"""What PEFT a model carries: one frozen, hashable spec shared by every model family.

PEFT parameters live in their own variable collection, `peft`, whose paths mirror
the modules they adapt (`peft/layer_0/attention/query/lora_a` next to
`params/layer_0/attention/query/kernel`); base `params` are never touched.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from lmx import paths

PEFT = "peft"  # the variable collection
METHODS = ("full", "lora", "houlsby", "pfeiffer", "bitfit", "prompt", "prefix", "ia3")


@dataclasses.dataclass(frozen=True)
class PeftSpec:
    """Static description of the PEFT modules a model builds (part of the jit key)."""
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_rslora: bool = False
    lora_targets: frozenset[str] = frozenset()  # module paths, e.g. "layer_0/attention/query"
    adapter: str = "none"  # "none" | "houlsby" | "pfeiffer"
    adapter_size: int = 64
    num_prompt_tokens: int = 0  # soft prompt tuning: P vectors before the input embeddings
    num_prefix_tokens: int = 0  # prefix tuning: P key/value vectors per attention layer
    ia3_targets: frozenset[str] = frozenset()  # IA3: learned scales on these modules' outputs
    ia3_feedforward: frozenset[str] = frozenset()  # ... or on their inputs (FFN down projections)

    @property
    def lora_scale(self) -> float:
        denominator = math.sqrt(self.lora_rank) if self.lora_rslora else self.lora_rank
        return self.lora_alpha / denominator

    def is_lora_target(self, module_path: tuple[str, ...]) -> bool:
        return self.lora_rank > 0 and "/".join(module_path) in self.lora_targets

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
        return PeftSpec(
                lora_rank=peft_config.lora.rank,
                lora_alpha=peft_config.lora.alpha,
                lora_dropout=peft_config.lora.dropout,
                lora_rslora=peft_config.lora.rslora,
                lora_targets=module_paths)
    if method in ("houlsby", "pfeiffer"):
        return PeftSpec(adapter=method, adapter_size=peft_config.adapter_size)
    if method == "prompt":
        return PeftSpec(num_prompt_tokens=peft_config.num_prompt_tokens)
    if method == "prefix":
        return PeftSpec(num_prefix_tokens=peft_config.num_prompt_tokens)
    if method == "ia3":
        def modules(patterns, what):
            kernels = paths.select(base_params, patterns, what=what) if patterns else []
            return frozenset(p.split("/", 1)[1].rsplit("/", 1)[0] for p in kernels)
        feedforward = modules(peft_config.ia3.feedforward, "config.peft.ia3.feedforward")
        targets = modules(peft_config.ia3.targets, "config.peft.ia3.targets")
        return PeftSpec(ia3_targets=targets | feedforward, ia3_feedforward=feedforward)
    return NO_PEFT


def trainable_patterns(peft_config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The regexes of trainable leaves: `config.peft.trainable`, or the method's default."""
    if peft_config.trainable:
        return tuple(peft_config.trainable)
    return DEFAULT_TRAINABLE[peft_config.method]
