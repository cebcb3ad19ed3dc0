"""One jitted step over a mixed-adapter batch: each row trains and is scored by its own adapter.

The trainable `peft` tree is N adapters stacked (`lmx.adapters.mixed.stack`); the batch
carries `adapter_ids` (B,). The step routes each row to its adapter (a gather, so the
choice of adapters is data: one compile serves every mixture), averages the loss per adapter
and sums over adapters, so adapter a's gradient is its gradient trained alone on its rows.
With an element-wise optimizer (SGD, Adam, AdamW; not a global-norm clip, which couples the
adapters) each adapter's update equals its own single-adapter step.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lmx.adapters.mixed import MixedSpec, mixed_loss, route
from lmx.train.step import TrainState, apply_gradients, forward, merge


def mixed_forward(model: nn.Module, mixed: MixedSpec, variables: Any, batch: dict, *,
                  train: bool = False, rng=None) -> jax.Array:
    """Logits of every row under its own adapter (`variables["peft"]` stacked)."""
    routed = {**variables, "peft": route(mixed, variables["peft"], batch["adapter_ids"])}
    logits, _ = forward(model, routed, batch, train=train, rng=rng)
    return logits


def mixed_train_step(state: TrainState, frozen: Any, batch: dict, *, model: nn.Module,
                     tx: optax.GradientTransformation, mixed: MixedSpec
                     ) -> tuple[TrainState, dict]:
    """One optimizer step of N adapters on one mixed batch; the frozen base is untouched."""
    rng, dropout_rng = jax.random.split(state.rng)

    def loss_of(trainable):
        variables = merge(trainable, frozen, state.model_state)
        logits = mixed_forward(model, mixed, variables, batch, train=True, rng=dropout_rng)
        return mixed_loss(logits, batch, mixed.num_adapters)

    (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state.trainable)
    trainable, opt_state = apply_gradients(state.trainable, frozen, grads, state.opt_state, tx)
    present = jnp.maximum((aux["count_N"] > 0).sum(), 1)
    metrics = {"loss": loss / present, "grad_norm": optax.tree.norm(grads), **aux}
    return state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state,
                         rng=rng), metrics


def mixed_eval_step(trainable: Any, frozen: Any, batch: dict, *, model: nn.Module,
                    mixed: MixedSpec) -> dict:
    """Per-adapter loss / correct / count sums and each row's prediction (its own classes)."""
    logits = mixed_forward(model, mixed, merge(trainable, frozen), batch)
    _, aux = mixed_loss(logits, batch, mixed.num_adapters)
    return {**aux, "predictions": logits.argmax(-1)}
