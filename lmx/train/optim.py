"""Optimizer: AdamW with warmup + decay, clipping, a decay mask, and frozen leaves set to zero."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from lmx import paths

TRAIN, FREEZE = "train", "freeze"
TRAIN_B = "train_lora_b"  # LoRA+: LoRA B matrices at a larger learning rate
NO_DECAY = (r".*bias", r".*scale", r".*norm.*", r".*embed/position.*", r".*embed/token_type.*")


def schedule(train_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    warmup = int(round(train_config.warmup_fraction * total_steps))
    decay = train_config.decay
    if decay not in ("linear", "cosine"):
        raise ValueError(f"config.train.decay={decay!r} is not 'linear' or 'cosine'")
    make = (optax.warmup_cosine_decay_schedule if decay == "cosine" else
            lambda init_value, peak_value, warmup_steps, decay_steps, end_value:
            optax.join_schedules([
                optax.linear_schedule(init_value, peak_value, warmup_steps),
                optax.linear_schedule(peak_value, end_value, decay_steps - warmup_steps)],
                [warmup_steps]))
    return make(init_value=0.0, peak_value=train_config.learning_rate,
                warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1), end_value=0.0)


def trainable_labels(variables: Any, trainable_patterns, *, what: str = "trainable patterns"
                     ) -> Any:
    """`TRAIN` / `FREEZE` per leaf of the full variables tree (every leaf covered)."""
    rules = [(p, TRAIN) for p in trainable_patterns]
    return paths.label(variables, rules, what=what, default=FREEZE)


def make_optimizer(train_config: ml_collections.ConfigDict, labels: Any,
                   total_steps: int, lora_plus_lr_ratio: float = 0.0
                   ) -> optax.GradientTransformation:
    """Clip + AdamW on trainable leaves; `set_to_zero` (no state at all) on frozen ones.

    `lora_plus_lr_ratio > 0` (LoRA+, Hayou et al. 2024; PEFT's `create_loraplus_optimizer`):
    trainable `lora_b` leaves get their own AdamW at `ratio` times the learning rate, after
    one gradient clip over all trainable leaves (frozen ones come in as zeros)."""
    decay_mask = paths.label(labels, [(p, False) for p in NO_DECAY], what="weight decay mask",
                             default=True, require_use=False)
    clip = train_config.grad_clip_norm  # 0: no clipping (optax would scale every update to 0)
    clipping = optax.clip_by_global_norm(clip) if clip > 0 else optax.identity()

    def adamw(ratio: float) -> optax.GradientTransformation:
        lr = schedule(train_config, total_steps)
        return optax.adamw(lambda step: ratio * lr(step), b1=0.9, b2=0.999, eps=1e-8,
                           weight_decay=train_config.weight_decay, mask=decay_mask)

    if lora_plus_lr_ratio <= 0:
        clipped = optax.chain(clipping, adamw(1.0))
        return optax.multi_transform({TRAIN: clipped, FREEZE: optax.set_to_zero()}, labels)
    plus_labels = paths.label(labels, [(r".*/lora_b", TRAIN_B)], what="LoRA+ B matrices",
                              default=TRAIN, require_use=True)
    plus_labels = jax.tree.map(lambda kind, label: kind if label == TRAIN else label,
                               plus_labels, labels)
    return optax.chain(
        clipping,
        optax.multi_transform({TRAIN: adamw(1.0), TRAIN_B: adamw(lora_plus_lr_ratio),
                               FREEZE: optax.set_to_zero()}, plus_labels))
