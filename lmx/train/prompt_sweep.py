"""Cloze prompt learning, model.task "cloze": one launch scores zero-shot (raw and calibrated)
and PET-style k-shot x seeds into one results.json.

    python -m lmx.main --config experiments/prompt_sst2.py --workdir runs/prompt_sst2

The cloze pieces (templates, verbalizers, class scores, calibration) are lmx.tasks.prompting;
this module trains: `config.peft` ("lora" or "full") decides what trains, lmx.train.optim's
optimizer updates it (frozen leaves `set_to_zero`), `lmx.train.step.classification_loss` over
the class scores at the mask is the loss. One device, no mesh: the models are small and each
run is a few dozen steps.

Axis legend: B batch, C classes, W verbalizer words per class.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from lmx import config as config_lib, peft as peft_lib, provenance, report
from lmx.data import examples
from lmx.tasks import prompting
from lmx.train import optim
from lmx.train.step import (TRAINABLE_COLLECTIONS, apply_gradients, classification_loss, merge,
                            split)


def trainable_split(model: prompting.ClozeModel, config: ml_collections.ConfigDict,
                    rng: jax.Array) -> tuple[nn.Module, Any, dict, dict]:
    """The encoder with its `config.peft` modules, the TRAIN / FREEZE labels of its variables
    and the (trainable, frozen) split. The MLM head, if any, is pretrained, not a fresh
    classifier: it trains under "full" (or when config.peft.trainable names it), not "lora"."""
    spec = peft_lib.spec_from_config(config.peft, model.variables)
    encoder = model.encoder.clone(peft=spec)
    variables = dict(model.variables)
    if spec != peft_lib.NO_PEFT:
        init = jax.jit(lambda key: encoder.init(key, jnp.zeros((1, 8), jnp.int32)))
        variables[peft_lib.PEFT] = nn.unbox(init(rng))[peft_lib.PEFT]
    learnable = {k: v for k, v in variables.items() if k in TRAINABLE_COLLECTIONS}
    headless = {**learnable, "params": {k: v for k, v in learnable["params"].items()
                                        if k != "head"}}
    labels = optim.trainable_labels(learnable, peft_lib.trainable_patterns(config.peft, headless),
                                    what="config.peft.trainable")
    trainable, frozen = split(learnable, labels)
    # A copy: the train step donates it, the loaded base stays usable for the next seed.
    return encoder, labels, jax.tree.map(jnp.copy, trainable), frozen


def few_shot_step(trainable, opt_state, frozen, batch, rng, *, encoder, head, tx, word_ids_CW,
                  weights_CW):
    """One optimizer step of cross-entropy over the class scores at the mask, updated as
    lmx.train.step.train_step updates (`step.apply_gradients`)."""

    def loss_of(trainable):
        scores_BC = prompting.class_scores(encoder, merge(trainable, frozen), batch, word_ids_CW,
                                           weights_CW, head=head, deterministic=False, rng=rng)
        return classification_loss(scores_BC, batch)[0]

    loss, grads = jax.value_and_grad(loss_of)(trainable)
    return (*apply_gradients(trainable, frozen, grads, opt_state, tx), loss)


def _epoch_batches(prompts: dict, labels_B: np.ndarray, batch_size: int, rng):
    """Shuffled batches of `batch_size`; the last one padded with weight-0 repeats."""
    order = rng.permutation(len(labels_B))
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        weights = np.ones(batch_size, np.float32)
        weights[len(index):] = 0.0
        index = np.concatenate([index, order[:batch_size - len(index)]])
        yield {**{k: v[index] for k, v in prompts.items()}, "labels": labels_B[index],
               "weights": weights}


def train_few_shot(model: prompting.ClozeModel, texts: Sequence[str], labels_B: np.ndarray,
                   config: ml_collections.ConfigDict, word_ids_CW, weights_CW, seed: int
                   ) -> tuple[prompting.ClozeModel, list[float]]:
    """Trains on `texts` for `config.train.num_epochs` epochs of `config.train.batch_size`;
    returns the trained model (encoder with PEFT) and the per-epoch mean losses."""
    init_rng, train_rng = jax.random.split(jax.random.key(seed))
    encoder, labels, trainable, frozen = trainable_split(model, config, init_rng)
    batch_size, epochs = config.train.batch_size, int(config.train.num_epochs)
    steps_per_epoch = -(-len(texts) // batch_size)
    tx = optim.make_optimizer(config.train, labels, epochs * steps_per_epoch)
    opt_state = tx.init(merge(trainable, frozen))
    step = jax.jit(functools.partial(
        few_shot_step, encoder=encoder, head=model.head, tx=tx,
        word_ids_CW=jnp.asarray(word_ids_CW), weights_CW=jnp.asarray(weights_CW)),
        donate_argnums=(0, 1))
    prompts = prompting.encode_prompts(model.tokenizer, texts, config.prompt.template,
                                       model.mask_token, model.mask_id, encoder.cfg.max_len,
                                       config.data.pad_multiple)
    shuffle, epoch_losses = np.random.default_rng(seed), []
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"{len(texts)} shots, seed {seed}",
               unit="step", leave=False)
    with bar:
        for _ in range(epochs):
            losses = []
            for batch in _epoch_batches(prompts, labels_B, batch_size, shuffle):
                train_rng, rng = jax.random.split(train_rng)
                trainable, opt_state, loss = step(trainable, opt_state, frozen, batch, rng)
                losses.append(loss)
                bar.update(1)
            epoch_losses.append(float(np.mean(jax.device_get(losses))))
            if not np.isfinite(epoch_losses[-1]):
                raise FloatingPointError(f"few-shot loss is {epoch_losses[-1]}: stopping")
            bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
    trained = dataclasses.replace(model, encoder=encoder, variables=merge(trainable, frozen))
    return trained, epoch_losses


def _mean_std(per_seed: list[dict], key: str) -> dict[str, float]:
    values = np.array([r[key] for r in per_seed])
    return {"mean": float(values.mean()), "std": float(values.std())}  # std over seeds, ddof 0


def few_shot(model: prompting.ClozeModel, config: ml_collections.ConfigDict, shots: int, train,
             evaluation, word_ids_CW, weights_CW) -> dict[str, Any]:
    """Trains on `shots` examples per class once per seed; scores on `evaluation`."""
    (train_texts, train_y), (eval_texts, eval_y) = train, evaluation
    per_seed = []
    for seed in config.prompt.seeds:
        index = prompting.sample_shots(train_y, shots, seed, word_ids_CW.shape[0])
        trained, losses = train_few_shot(model, [train_texts[i] for i in index], train_y[index],
                                         config, word_ids_CW, weights_CW, seed)
        scores = prompting.evaluate(trained, eval_texts, eval_y, word_ids_CW, weights_CW, config,
                                    f"eval {shots}-shot")
        per_seed.append({"seed": seed, **scores, "epoch_losses": losses})
        tqdm.write(f"{shots}-shot seed {seed}: raw {scores['accuracy_raw']:.4f}, calibrated "
                   f"{scores['accuracy_calibrated']:.4f} "
                   f"(loss {losses[0]:.3f} -> {losses[-1]:.3f})")
    return {"per_seed": per_seed, "accuracy_raw": _mean_std(per_seed, "accuracy_raw"),
            "accuracy_calibrated": _mean_std(per_seed, "accuracy_calibrated")}


def _load(config: ml_collections.ConfigDict):
    """The model and the (texts, labels) of the validation file and, if used, the train file."""
    m, d = config.model, config.data
    model = prompting.load(m.pretrained, config.prompt.head, dtype=m.dtype,
                           dropout_rate=m.dropout_rate,
                           attention_dropout_rate=m.attention_dropout_rate)
    eval_texts, eval_labels = prompting.read_examples(d.validation_file, d.validation_split,
                                                      config)
    if d.max_eval_examples:
        eval_texts, eval_labels = (eval_texts[:d.max_eval_examples],
                                   eval_labels[:d.max_eval_examples])
    needs_train = any(k > 0 for k in config.prompt.shots) or config.prompt.verbalizer_candidates
    train = prompting.read_examples(d.train_file, d.train_split, config) if needs_train else ([], [])
    return model, (eval_texts, eval_labels), train


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Zero-shot and few-shot cloze accuracy on `config.data.validation_file`; writes
    WORKDIR/config.json and WORKDIR/results.json."""
    started = time.perf_counter()
    config_lib.validate(config, 1)  # settings first: nothing is loaded for a bad one
    for spec in (config.prompt.verbalizer, *config.prompt.verbalizer_candidates):
        prompting.parse_verbalizer(spec)
    os.makedirs(workdir, exist_ok=True)
    report.write_json(workdir, "config.json", config.to_dict())
    model, (eval_texts, eval_labels), (train_texts, train_labels) = _load(config)
    results: dict[str, Any] = {
        "task": "cloze", "model": config.model.pretrained, "head": model.head,
        "template": config.prompt.template, "content_free": list(config.prompt.content_free),
        "eval_file": config.data.validation_file, "eval_examples": len(eval_texts),
        "method": config.peft.method, "hardware": report.hardware(),
        "provenance": provenance.provenance()}
    spec = config.prompt.verbalizer
    if config.prompt.verbalizer_candidates:
        results["verbalizer_selection"] = prompting.select_verbalizer(model, config, train_texts,
                                                                      train_labels)
        spec = results["verbalizer_selection"]["chosen"]
    verbalizer = prompting.parse_verbalizer(spec)
    names = sorted(verbalizer)
    results["verbalizer"] = verbalizer
    word_ids_CW, weights_CW = prompting.verbalizer_ids(model.tokenizer, verbalizer, names)
    evaluation = (eval_texts, examples.label_ids(eval_labels, names, config.data.validation_file))
    for shots in config.prompt.shots:
        if shots == 0:
            results["zero_shot"] = prompting.evaluate(model, *evaluation, word_ids_CW, weights_CW,
                                                      config, "zero-shot")
        else:
            train = (train_texts, examples.label_ids(train_labels, names, config.data.train_file))
            results.setdefault("few_shot", {})[str(shots)] = few_shot(
                model, config, shots, train, evaluation, word_ids_CW, weights_CW)
    results["seconds"] = time.perf_counter() - started
    report.write_json(workdir, "results.json", results)
    return results
