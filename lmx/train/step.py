"""Pure train / eval steps over a split of the variables into trainable and frozen parts.

The state holds only what trains (plus optimizer state, step, rng and mutable model
state such as BatchNorm statistics); frozen weights come in as a separate argument,
are never differentiated and never donated, so they come back bit-identical.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from lmx.models import families
from lmx.train import optim

TRAINABLE_COLLECTIONS = ("params", "peft")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    trainable: Any  # {"params": {...}, "peft": {...}} holding only trainable leaves
    opt_state: Any
    model_state: Any  # other mutable collections, e.g. {"batch_stats": ...}
    rng: jax.Array


def split(tree: Any, labels: Any) -> tuple[dict, dict]:
    """Splits a nested dict into (trainable, frozen) by `optim.TRAIN` / `optim.FREEZE` labels."""
    flat = traverse_util.flatten_dict(flax.core.unfreeze(tree))
    flat_labels = traverse_util.flatten_dict(flax.core.unfreeze(labels))
    trainable = {k: v for k, v in flat.items() if flat_labels[k] == optim.TRAIN}
    frozen = {k: v for k, v in flat.items() if flat_labels[k] != optim.TRAIN}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(*trees: Any) -> dict:
    """Union of nested dicts with disjoint leaves."""
    flat = {}
    for tree in trees:
        flat.update(traverse_util.flatten_dict(flax.core.unfreeze(tree)))
    return traverse_util.unflatten_dict(flat)


def forward(model: nn.Module, variables: Any, batch: dict, *, train: bool, rng=None):
    """Logits and updated mutable collections (BatchNorm statistics) for a batch, fed to the
    model the way its family (`lmx.models.families`) takes inputs."""
    rngs = {"dropout": rng} if train and rng is not None else {}
    return families.of_module(model).forward(model, variables, batch, train, rngs)


def classification_loss(logits_BxL: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    """Weighted mean cross-entropy over every labelled position, for any task.

    `labels` is (B,) for sequence / image classification or (B, T) for token-level tasks
    (NER tags, masked or next tokens), where labels < 0 carry no loss; `weights` (B,) zero out
    filler rows. `x` in the names stands for the optional T axis.
    """
    labels_Bx = batch["labels"]
    rows_B = batch["weights"].astype(jnp.float32)
    weights_Bx = rows_B.reshape(rows_B.shape + (1,) * (labels_Bx.ndim - 1)) * (labels_Bx >= 0)
    ce_Bx = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxL.astype(jnp.float32), jnp.maximum(labels_Bx, 0))
    loss_sum = (ce_Bx * weights_Bx).sum()
    correct = ((logits_BxL.argmax(-1) == labels_Bx) * weights_Bx).sum()
    return loss_sum / jnp.maximum(weights_Bx.sum(), 1.0), {
        "loss_sum": loss_sum, "correct": correct, "count": weights_Bx.sum()}


def trainable_grads(state: TrainState, frozen: Any, batch: dict, rng: jax.Array, *,
                    model: nn.Module) -> tuple[jax.Array, dict, Any, Any]:
    """Loss, metrics, new model state and the gradient w.r.t. `state.trainable` only."""

    def loss_of(trainable):
        variables = merge(trainable, frozen, state.model_state)
        logits, model_state = forward(model, variables, batch, train=True, rng=rng)
        loss, aux = classification_loss(logits, batch)
        return loss, (aux, model_state)

    (loss, (aux, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state.trainable)
    return loss, aux, model_state, grads


def apply_gradients(trainable: Any, frozen: Any, grads: Any, opt_state: Any,
                    tx: optax.GradientTransformation) -> tuple[Any, Any]:
    """(new trainable, new optimizer state) from the gradients of the trainable leaves.

    The optimizer sees the full tree (the frozen part with zero gradients; `set_to_zero`
    drops it and XLA removes the zeros); only trainable leaves are updated."""
    full_grads = merge(grads, jax.tree.map(jnp.zeros_like, frozen))
    updates, opt_state = tx.update(full_grads, opt_state, merge(trainable, frozen))
    flat_updates = traverse_util.flatten_dict(updates)
    trainable_updates = traverse_util.unflatten_dict(
        {k: flat_updates[k] for k in traverse_util.flatten_dict(trainable)})
    return optax.apply_updates(trainable, trainable_updates), opt_state


def train_step(state: TrainState, frozen: Any, batch: dict, *, model: nn.Module,
               tx: optax.GradientTransformation) -> tuple[TrainState, dict]:
    """One optimizer step; frozen weights are never differentiated nor updated."""
    rng, dropout_rng = jax.random.split(state.rng)
    loss, aux, model_state, grads = trainable_grads(state, frozen, batch, dropout_rng,
                                                    model=model)
    trainable, opt_state = apply_gradients(state.trainable, frozen, grads, state.opt_state, tx)
    new_state = state.replace(
        step=state.step + 1,
        trainable=trainable,
        opt_state=opt_state,
        model_state=model_state or state.model_state,
        rng=rng)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    return new_state, metrics


def eval_step(trainable: Any, frozen: Any, model_state: Any, batch: dict, *,
              model: nn.Module, outputs: Callable[[jax.Array, dict], dict] | None = None
              ) -> dict:
    """Loss sums for one batch, plus what the task's `outputs(logits, batch)` returns
    (default: the argmax predictions)."""
    logits, _ = forward(model, merge(trainable, frozen, model_state), batch, train=False)
    _, aux = classification_loss(logits, batch)
    extra = outputs(logits, batch) if outputs else {"predictions": logits.argmax(-1)}
    return {**aux, **extra}
