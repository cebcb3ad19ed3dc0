"""Named LoRA adapters stacked on one base, each row of a batch routed to its own adapter.

Axis legend: N adapters, B batch (rows), L scanned layers, I/O in/out features, R LoRA rank,
D model width, C classes of a task head.

A single-adapter model keeps today's layout (`peft/...` for LoRA, `params/head/...` for its
task head). An `Adapter` holds one adapter on its own: its `PeftSpec` (`head_in_peft=True`)
and one `peft` tree in which its task head sits at `peft/head/classifier`; `from_variables` /
`to_variables` convert between the two layouts exactly. `stack` puts N adapters along a
leading adapter axis (ranks zero-padded to the largest, heads zero-padded to the most
classes with a -1e9 bias on the padding, modules an adapter lacks as zeros: each padding
contributes exactly 0 and gets a zero gradient), `route` gathers each row's adapter (its
LoRA scale folded into A), so one compiled forward or train step serves any mixture of
adapters. `mixed_loss` averages the loss per adapter and sums over adapters: adapter a's
gradient is exactly its gradient trained alone on its rows.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from lmx.peft import PeftSpec

PAD_LOGIT = -1e9  # bias of a padded class: softmax gives it exactly 0
SCANNED = "layers"  # a scanned model's stacked block (leaves carry a leading layer axis)


@flax.struct.dataclass
class Adapter:
    """One named adapter: its spec (static) and its `peft` tree (task head at
    `head/classifier`); a pytree, so it goes in and out of jitted functions."""
    spec: PeftSpec = flax.struct.field(pytree_node=False)
    peft: Any = None


def from_variables(spec: PeftSpec, trained: dict) -> Adapter:
    """Today's single-adapter layout (`{"peft": ..., "params": {"head": ...}}`, only what
    trained) as an `Adapter`: the task head's classifier moves to `peft/head/classifier`."""
    peft = dict(flax.core.unfreeze(trained.get("peft", {})))
    head = flax.core.unfreeze(trained.get("params", {})).get("head", {})
    extra = sorted(set(trained.get("params", {})) - {"head"}) + sorted(set(head) - {"classifier"})
    if extra:
        raise ValueError(f"an Adapter holds PEFT leaves and a classifier head; also got {extra}")
    if "classifier" in head:
        peft["head"] = {"classifier": head["classifier"]}
    return Adapter(dataclasses.replace(spec, head_in_peft="classifier" in head), peft)


def to_variables(adapter: Adapter) -> tuple[PeftSpec, dict]:
    """Inverse of `from_variables`: (spec, `{"peft": ..., "params": {"head": ...}}`)."""
    peft = dict(adapter.peft)
    trained = {}
    if "head" in peft:
        trained["params"] = {"head": peft.pop("head")}
    if peft:
        trained["peft"] = peft
    return dataclasses.replace(adapter.spec, head_in_peft=False), trained


@dataclasses.dataclass(frozen=True)
class MixedSpec:
    """Static description of N stacked adapters (hashable: part of the jit key)."""
    names: tuple[str, ...]
    spec: PeftSpec  # the model's: union of targets, the largest rank, scale 1 (folded into A)
    scales: tuple[float, ...]  # each adapter's LoRA scale, alpha / r (or / sqrt(r))
    num_labels: tuple[int, ...]  # each adapter's head classes (0: no head)

    @property
    def num_adapters(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"no adapter {name!r}; have {list(self.names)}")
        return self.names.index(name)


def _check_stackable(adapters: dict[str, Adapter]) -> None:
    for name, adapter in adapters.items():
        s = adapter.spec
        others = [f for f, on in (("IA3", s.ia3_targets), ("adapter", s.adapter != "none"),
                                  ("prompt", s.num_prompt_tokens),
                                  ("prefix", s.num_prefix_tokens),
                                  ("LN tuning", s.ln_tuning)) if on]
        if others:
            raise ValueError(f"adapter {name!r}: mixed batches route LoRA (and task heads) "
                             f"only; it also has {others}")
    dropouts = {a.spec.lora_dropout for a in adapters.values()}
    if len(dropouts) > 1:
        raise ValueError(f"mixed adapters must share lora_dropout, got {sorted(dropouts)}")


def _pad(x: np.ndarray, shape: tuple[int, ...], value: float = 0.0) -> np.ndarray:
    widths = [(0, want - have) for have, want in zip(x.shape, shape)]
    return np.pad(np.asarray(x, np.float32), widths, constant_values=value)


def stack(adapters: dict[str, Adapter]) -> tuple[MixedSpec, dict]:
    """(MixedSpec, peft tree with a leading adapter axis N) of the named adapters, in order.

    A scanned model's leaves (under `layers/`) keep the layer axis first: (L, N, ...)."""
    _check_stackable(adapters)
    names = tuple(adapters)
    flats = [traverse_util.flatten_dict(flax.core.unfreeze(a.peft)) for a in adapters.values()]
    shapes: dict[tuple, tuple[int, ...]] = {}
    for flat in flats:
        for path, leaf in flat.items():
            old = shapes.get(path, (0,) * np.ndim(leaf))
            if len(old) != np.ndim(leaf):
                raise ValueError(f"peft/{'/'.join(path)}: ranks differ across adapters")
            shapes[path] = tuple(max(a, b) for a, b in zip(old, np.shape(leaf)))
    stacked = {}
    for path, shape in shapes.items():
        fill = PAD_LOGIT if path[:1] == ("head",) and path[-1] == "bias" else 0.0
        rows = [_pad(flat[path], shape, fill) if path in flat else np.full(shape, fill, np.float32)
                for flat in flats]
        stacked[path] = np.stack(rows, axis=1 if path[0] == SCANNED else 0)
    if any(p[:1] == ("head",) for p in shapes) and not all(
            ("head", "classifier", "bias") in flat for flat in flats):
        raise ValueError("mixed task heads need a classifier bias on every adapter (padded "
                         "classes are switched off through it)")
    specs = [a.spec for a in adapters.values()]
    if any(s.lora_dora or s.lora_rank_pattern or s.lora_alpha_pattern for s in specs):
        raise ValueError("mixed-adapter batches take plain LoRA: DoRA and per-module rank / "
                         "alpha patterns (one scale per adapter here) are not supported")
    if any(s.lora_init != "default" or "embed/token" in s.lora_targets for s in specs):
        raise ValueError("mixed-adapter batches take plain LoRA: PiSSA / OLoRA (lora_init, each "
                         "adapter's own residual base) and LoRA on the token table are not "
                         "supported")
    rank = max(s.lora_rank for s in specs)
    spec = PeftSpec(lora_rank=rank, lora_alpha=float(rank), lora_dropout=specs[0].lora_dropout,
                    lora_targets=frozenset().union(*(s.lora_targets for s in specs)),
                    head_in_peft=any(s.head_in_peft for s in specs))
    num_labels = tuple(int(np.shape(f[("head", "classifier", "kernel")])[-1])
                       if ("head", "classifier", "kernel") in f else 0 for f in flats)
    mixed = MixedSpec(names, spec, tuple(s.lora_scale if s.lora_rank else 1.0 for s in specs),
                      num_labels)
    return mixed, traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in stacked.items()})


def unstack(mixed: MixedSpec, stacked: Any, like: dict[str, Adapter]) -> dict[str, Adapter]:
    """The named adapters back out of a (trained) stack, each cut to its own shapes
    (`like`: the adapters that were stacked, for their specs and shapes)."""
    flat = traverse_util.flatten_dict(flax.core.unfreeze(stacked))
    out = {}
    for n, name in enumerate(mixed.names):
        own = traverse_util.flatten_dict(flax.core.unfreeze(like[name].peft))
        leaves = {}
        for path, leaf in own.items():
            row = flat[path][:, n] if path[0] == SCANNED else flat[path][n]
            leaves[path] = row[tuple(slice(0, size) for size in np.shape(leaf))]
        out[name] = Adapter(like[name].spec, traverse_util.unflatten_dict(leaves))
    return out


def route(mixed: MixedSpec, stacked: Any, adapter_ids_B: jax.Array) -> dict:
    """Each row's own adapter: every stacked leaf gathered by `adapter_ids_B` (B,) into a
    per-row leaf (B, ...) ((L, B, ...) when scanned), A times that adapter's LoRA scale."""
    scale_N = jnp.asarray(mixed.scales, jnp.float32)

    def gather(path, leaf):
        axis = 1 if path[0] == SCANNED else 0
        rows = jnp.take(leaf, adapter_ids_B, axis=axis)
        if path[-1] == "lora_a":
            scale_B = scale_N[adapter_ids_B]
            rows = rows * scale_B.reshape((1,) * axis + scale_B.shape
                                          + (1,) * (rows.ndim - axis - 1))
        return rows

    flat = traverse_util.flatten_dict(flax.core.unfreeze(stacked))
    return traverse_util.unflatten_dict({p: gather(p, v) for p, v in flat.items()})


def mixed_loss(logits_BC: jax.Array, batch: dict, num_adapters: int
               ) -> tuple[jax.Array, dict]:
    """Sum over adapters of each adapter's weighted mean cross-entropy on its own rows.

    Returns (loss, aux): aux holds per-adapter `loss_N`, `correct_N`, `count_N` sums."""
    labels_B, ids_B = batch["labels"], batch["adapter_ids"]
    weights_B = batch["weights"].astype(jnp.float32) * (labels_B >= 0)
    ce_B = optax.softmax_cross_entropy_with_integer_labels(
        logits_BC.astype(jnp.float32), jnp.maximum(labels_B, 0))
    rows_BN = jax.nn.one_hot(ids_B, num_adapters, dtype=jnp.float32) * weights_B[:, None]
    count_N = rows_BN.sum(0)
    loss_sum_N = jnp.einsum("b,bn->n", ce_B, rows_BN)
    correct_N = jnp.einsum("b,bn->n", (logits_BC.argmax(-1) == labels_B).astype(jnp.float32),
                           rows_BN)
    loss = (loss_sum_N / jnp.maximum(count_N, 1.0)).sum()
    return loss, {"loss_sum_N": loss_sum_N, "correct_N": correct_N, "count_N": count_N}
