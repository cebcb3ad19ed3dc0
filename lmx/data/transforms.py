"""Per-example and per-batch token transforms: MLM masking, masked-position gathering, NER
first-sub-token label alignment. Batching (padding, bucketing, packing) is lmx.data.batching.

Transforms are `fn(example: dict) -> dict` on numpy arrays, randomness a function of
(seed, example["epoch"], example["index"]).
Axis legend: B batch, T padded length, M gathered positions, L one example's length.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np

IGNORE = -100  # label of positions that carry no loss (HF / PyTorch convention)


# --- MLM masking -------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _special_and_allowed(vocab_size: int, special: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """The special ids and the non-special ids a random replacement draws from (computed once
    per vocabulary: redoing the setdiff per example made masking the pre-training bottleneck)."""
    special_S = np.asarray(special, np.int64)
    return special_S, np.setdiff1d(np.arange(vocab_size), special_S)


def mlm_mask(example: dict, *, seed: int, mask_id: int, vocab_size: int,
             special_ids: Sequence[int], rate: float = 0.15,
             split: tuple[float, float] = (0.8, 0.1)) -> dict:
    """BERT masking of `example["ids"]` (L,): each non-special token is picked with `rate`;
    picked -> `split[0]` (80%) `mask_id`, `split[1]` (10%) a random non-special id, the rest
    (10%) unchanged.

    The RNG is seeded by (seed, example["epoch"], example["index"]), so an example's mask is
    the same wherever and whenever it is drawn. Adds `labels` (original id where picked,
    IGNORE elsewhere) and replaces `ids`; other keys pass through.
    """
    ids_L = np.asarray(example["ids"])
    rng = np.random.default_rng([seed, int(example.get("epoch", 0)), int(example["index"])])
    special, allowed = _special_and_allowed(vocab_size, tuple(sorted(set(special_ids))))
    candidates_L = ~np.isin(ids_L, special)
    picked_L = candidates_L & (rng.random(ids_L.shape) < rate)
    action_L = rng.random(ids_L.shape)  # < to_mask: [MASK]; < to_mask + to_random: random
    random_L = allowed[rng.integers(len(allowed), size=ids_L.shape)]
    to_mask, to_random = split
    new_L = np.where(action_L < to_mask, mask_id,
                     np.where(action_L < to_mask + to_random, random_L, ids_L))
    return {**example, "ids": np.where(picked_L, new_L, ids_L).astype(ids_L.dtype),
            "labels": np.where(picked_L, ids_L, IGNORE).astype(np.int32)}


def gather_targets(batch: dict, *, fraction: float = 0.3, multiple: int = 8) -> dict:
    """Adds `targets` (B, M): each row's labelled positions (labels != IGNORE), left-aligned and
    filled with position 0; `labels` becomes (B, M) with IGNORE on the filler.

    M = ceil(fraction * T) rounded up to `multiple` (one shape per padded length, so a few
    compiles), or T when some row has more labelled positions than that: nothing is dropped.
    """
    labels_BT = batch["labels"]
    B, T = labels_BT.shape
    picked_BT = labels_BT != IGNORE
    M = min(T, multiple * math.ceil(math.ceil(fraction * T) / multiple))
    if picked_BT.sum(1).max(initial=0) > M:
        M = T
    order_BT = np.argsort(~picked_BT, axis=1, kind="stable")  # picked positions first, in order
    targets_BM = order_BT[:, :M].astype(np.int32)
    keep_BM = np.take_along_axis(picked_BT, targets_BM, axis=1)
    labels_BM = np.where(keep_BM, np.take_along_axis(labels_BT, targets_BM, axis=1), IGNORE)
    return {**batch, "targets": np.where(keep_BM, targets_BM, 0).astype(np.int32),
            "labels": labels_BM.astype(labels_BT.dtype)}


# --- NER label alignment -----------------------------------------------------------------

def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence ([CLS] / [SEP] ...)."""
    bare = tokenizer.encode("x", add_special_tokens=False)
    full = tokenizer.encode("x")
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    raise ValueError("cannot locate the content inside the tokenizer's special tokens")


def align_labels(tokenizer, *, label_names: Sequence[str], max_length: int
                 ) -> Callable[[dict], dict]:
    """fn({"words", "tags", ...}) -> + {"ids", "labels"}: first sub-token gets the word's tag id.

    lmx.hf.tokenizer exposes no word ids, so each word is encoded on its own (without special
    tokens) and the pieces are concatenated. That equals encoding the sentence for WordPiece
    (BERT splits on whitespace before WordPiece); for sentencepiece / byte-level BPE, whose
    pieces depend on the preceding space, it is an approximation. A word with no pieces loses
    its label. Truncation keeps the first `max_length` positions including special tokens.
    """
    index = {name: i for i, name in enumerate(label_names)}
    prefix, suffix = _special_affixes(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget <= 0:
        raise ValueError(f"max_length={max_length} leaves no room after special tokens")
    cache: dict[str, list[int]] = {}

    def fn(example: dict) -> dict:
        ids, labels = list(prefix), [IGNORE] * len(prefix)
        for word, tag in zip(example["words"], example["tags"], strict=True):
            if tag not in index:
                raise ValueError(f"tag {tag!r} not in label_names {list(label_names)}")
            if word not in cache:
                cache[word] = tokenizer.encode(word, add_special_tokens=False)
            pieces = cache[word]
            ids.extend(pieces)
            labels.extend([index[tag]] + [IGNORE] * (len(pieces) - 1) if pieces else [])
        content = slice(len(prefix), len(prefix) + budget)
        ids = ids[:len(prefix)] + ids[content] + list(suffix)
        labels = labels[:len(prefix)] + labels[content] + [IGNORE] * len(suffix)
        return {**example, "ids": np.asarray(ids, np.int32), "labels": np.asarray(labels, np.int32)}

    return fn
