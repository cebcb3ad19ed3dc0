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
from lmx.scale import sharding as ax
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


def accumulated_grads(state: TrainState, frozen: Any, batch: dict, rng: jax.Array, *,
                      model: nn.Module, steps: int) -> tuple[jax.Array, dict, Any, Any]:
    """`trainable_grads` of the whole batch, computed over `steps` micro-batches in a
    `jax.lax.scan` so only one micro-batch's activations are live at a time.

    Convention: the loss is the large batch's, every real token (or example) weighing the
    same whichever micro-batch holds it: the fp32 sum of each micro-batch's gradient of its
    loss *sum*, divided once by the whole batch's count of weighted labels (not a mean of
    micro-batch means, which would overweight a micro-batch with few real tokens). Micro-batch
    i takes rows i, i + steps, ... so each one stays split over the data-parallel devices.
    Dropout draws one key per micro-batch; BatchNorm statistics update once per micro-batch.
    """
    size = jax.tree.leaves(batch)[0].shape[0]
    if size % steps:
        raise ValueError(f"batch of {size} rows does not split into grad_accum_steps={steps}")

    def micro(x):  # (B, ...) -> (steps, B // steps, ...), rows strided as documented
        x = jnp.swapaxes(x.reshape(size // steps, steps, *x.shape[1:]), 0, 1)
        return nn.with_logical_constraint(x, (None, ax.BATCH) + (None,) * (x.ndim - 2))

    def body(carry, inputs):
        grads_sum, aux_sum, model_state = carry
        batch_i, rng_i = inputs

        def loss_sum_of(trainable):
            variables = merge(trainable, frozen, model_state)
            logits, new_model_state = forward(model, variables, batch_i, train=True, rng=rng_i)
            _, aux = classification_loss(logits, batch_i)
            return aux["loss_sum"], (aux, new_model_state or model_state)

        (_, (aux, model_state)), grads = jax.value_and_grad(loss_sum_of, has_aux=True)(
            state.trainable)
        grads_sum = jax.tree.map(lambda s, g: s + g.astype(jnp.float32), grads_sum, grads)
        return (grads_sum, jax.tree.map(jnp.add, aux_sum, aux), model_state), None

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), state.trainable)
    aux0 = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")}
    (grads_sum, aux, model_state), _ = jax.lax.scan(
        body, (zeros, aux0, state.model_state),
        (jax.tree.map(micro, batch), jax.random.split(rng, steps)))
    count = jnp.maximum(aux["count"], 1.0)
    grads = jax.tree.map(lambda g, x: (g / count).astype(x.dtype), grads_sum, state.trainable)
    return aux["loss_sum"] / count, aux, model_state, grads


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
               tx: optax.GradientTransformation, grad_accum_steps: int = 1
               ) -> tuple[TrainState, dict]:
    """One optimizer step; frozen weights are never differentiated nor updated.
    `grad_accum_steps` > 1 computes the gradient over that many micro-batches
    (`accumulated_grads`)."""
    rng, dropout_rng = jax.random.split(state.rng)
    if grad_accum_steps > 1:
        loss, aux, model_state, grads = accumulated_grads(
            state, frozen, batch, dropout_rng, model=model, steps=grad_accum_steps)
    else:
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
