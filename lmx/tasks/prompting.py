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
full fine-tuning), then the same evaluation as zero-shot. The training and the sweep over
shots and seeds live in lmx.train.prompt_sweep (model.task "cloze" of the one launcher):

    python -m lmx.main --config experiments/prompt_sst2.py --workdir runs/prompt_sst2

Settings: config.prompt.* (template, verbalizer, content_free, head ...), config.data.pad_multiple,
config.train.eval_batch_size.

Axis legend: B batch, T length, D model width, C classes, W verbalizer words per class,
N content-free inputs.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from lmx.data import examples, readers, sources
from lmx.models.transformer import Head

PLACEHOLDER_MASK, PLACEHOLDER_SENTENCE = "[MASK]", "{sentence}"
# Binary sentiment verbalizers for GLUE-style labels ("1" positive, "0" negative).
SENTIMENT_VERBALIZERS = {
    "great/terrible": {"0": ["terrible"], "1": ["great"]},
    "good/bad": {"0": ["bad"], "1": ["good"]},
    "positive/negative": {"0": ["negative"], "1": ["positive"]},
    "wonderful/awful": {"0": ["awful"], "1": ["wonderful"]},
}
HEADS = ("auto", "mlm", "tied")  # auto: the checkpoint's MLM head if it has one, else tied


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


def load(model: str, head: str = "auto", **overrides: Any) -> ClozeModel:
    """Loads `model` for cloze scoring; `head="auto"` uses its MLM head when it has one.
    `overrides`: lmx config fields (dtype, dropout_rate, ...) passed to lmx.hf.from_pretrained."""
    import lmx.hf  # noqa: PLC0415
    from lmx.hf import pretrained  # noqa: PLC0415
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not one of {HEADS}")
    model_dir = pretrained.resolve_model_dir(model)
    module, variables = lmx.hf.from_pretrained(model_dir, task="mlm", fresh_heads=False,
                                              **overrides)
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
    """Class scores (B, C) of `texts` in `config.train.eval_batch_size` batches (the last
    padded), prompted with `config.prompt.template`."""
    size, out = config.train.eval_batch_size, []
    for start in tqdm(range(0, len(texts), size), desc=desc, leave=False,
                      disable=len(texts) <= size):
        chunk = list(texts[start:start + size])
        real = len(chunk)
        chunk += [chunk[0]] * (size - real)  # a fixed batch shape: one compile per length
        batch = encode_prompts(model.tokenizer, chunk, config.prompt.template, model.mask_token,
                               model.mask_id, model.encoder.cfg.max_len, config.data.pad_multiple)
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
    """Raw and calibrated accuracy (`config.prompt.template`, `config.prompt.content_free`)."""
    all_probs = softmax(score_texts(model, list(texts) + list(config.prompt.content_free),
                                    word_ids_CW,
                                    weights_CW, config, desc))  # content-free inputs ride along
    probs_BC, cf_NC = all_probs[:len(texts)], all_probs[len(texts):]
    calibrated_BC = calibrate(probs_BC, cf_NC)
    return {"accuracy_raw": float((probs_BC.argmax(-1) == labels_B).mean()),
            "accuracy_calibrated": float((calibrated_BC.argmax(-1) == labels_B).mean()),
            "content_free_probs": cf_NC.mean(0).tolist(),
            "predicted_fraction_raw": (np.bincount(probs_BC.argmax(-1), minlength=probs_BC.shape[1])
                                       / len(probs_BC)).tolist()}


# ----------------------------------------------------------------------------- data


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


def read_examples(path: str, split: str, config: ml_collections.ConfigDict
                  ) -> tuple[list[str], list[str]]:
    """Texts and label strings of a CSV / TSV file (`config.data.text_column` / `label_column`)
    or of a tfds split ("tfds:glue/sst2")."""
    if path.startswith(sources.TFDS):
        rows = sources.tfds_records(path, split, config.data)
    else:
        rows = readers.read_delimited(sources.local_file(path), config.data.text_column,
                                      config.data.label_column)
    return [r["text"] for r in rows], [r["label"] for r in rows]


def select_verbalizer(model: ClozeModel, config: ml_collections.ConfigDict,
                      texts: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Zero-shot scores of each `config.prompt.verbalizer_candidates` on
    `config.prompt.select_examples` training examples (drawn with seed 0); the chosen one has
    the best calibrated accuracy (then raw)."""
    size = min(config.prompt.select_examples, len(texts))
    pick = np.random.default_rng(0).choice(len(texts), size, replace=False)
    table = {}
    for spec in config.prompt.verbalizer_candidates:
        verbalizer = parse_verbalizer(spec)
        names = sorted(verbalizer)
        ids_CW, weights_CW = verbalizer_ids(model.tokenizer, verbalizer, names)
        y_B = examples.label_ids([labels[i] for i in pick], names, config.data.train_file)
        scores = evaluate(model, [texts[i] for i in pick], y_B, ids_CW, weights_CW, config,
                          f"select {spec}")
        table[spec] = {k: scores[k] for k in ("accuracy_raw", "accuracy_calibrated")}
    chosen = max(table, key=lambda k: (table[k]["accuracy_calibrated"],
                                       table[k]["accuracy_raw"]))
    return {"train_examples": len(pick), "candidates": table, "chosen": chosen}


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
