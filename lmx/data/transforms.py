"""Token-level input pipeline: packing for LM pre-training, MLM masking, NER label alignment,
dynamic padding with length bucketing; orders are pure functions of (seed, epoch, step).

Transforms are `fn(example: dict) -> dict` on numpy arrays; batchers yield padded batches.
Axis legend: N packed rows, B batch, T (padded / packed) length, L one example's length.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Iterator, Sequence

import numpy as np

IGNORE = -100  # label of positions that carry no loss (HF / PyTorch convention)


# --- packing -----------------------------------------------------------------------------

def pack(documents: Sequence[np.ndarray], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Concatenate documents and cut into rows of `seq_len`; every token lands exactly once.

    A document cut by a row end continues in the next row as a new segment. Returns `ids_NT`,
    `segment_ids_NT` (1, 2, ... per row; 0 = padding, only in the last row) and
    `positions_NT` (0-based within each segment) for segment-masked attention.
    """
    lengths = np.asarray([len(d) for d in documents], np.int64)
    total = int(lengths.sum())
    N = max(1, math.ceil(total / seq_len))
    ids = np.full(N * seq_len, pad_id, np.int32)
    doc_of_token = np.repeat(np.arange(len(documents)), lengths)
    if total:
        ids[:total] = np.concatenate([np.asarray(d, np.int32) for d in documents])
    doc = np.full(N * seq_len, -1, np.int64)
    doc[:total] = doc_of_token
    doc_NT = doc.reshape(N, seq_len)
    starts_NT = np.ones((N, seq_len), bool)  # a segment starts at column 0 or a new document
    starts_NT[:, 1:] = doc_NT[:, 1:] != doc_NT[:, :-1]
    segment_ids_NT = np.cumsum(starts_NT, axis=1).astype(np.int32)
    segment_ids_NT[doc_NT < 0] = 0
    index_NT = np.broadcast_to(np.arange(seq_len), (N, seq_len))
    segment_start_NT = np.maximum.accumulate(np.where(starts_NT, index_NT, 0), axis=1)
    positions_NT = (index_NT - segment_start_NT).astype(np.int32)
    positions_NT[doc_NT < 0] = 0
    return {"ids": ids.reshape(N, seq_len), "segment_ids": segment_ids_NT,
            "positions": positions_NT}


def packed_batches(documents: Sequence[np.ndarray], seq_len: int, batch_size: int, *,
                   seed: int, start_step: int, pad_id: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless packed batches: documents shuffled per epoch (rng [seed, epoch]), then packed.

    Rows per epoch do not depend on the order, so step -> (epoch, row) is exact for resume.
    The last `rows % batch_size` rows of an epoch are dropped (every step has B rows).
    """
    total = sum(len(d) for d in documents)
    per_epoch = math.ceil(total / seq_len) // batch_size
    if per_epoch == 0:
        raise ValueError(f"{total} tokens make fewer than batch_size={batch_size} rows of {seq_len}")
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(len(documents))
        rows = pack([documents[i] for i in order], seq_len, pad_id)
        for step in range(offset, per_epoch):
            yield {k: v[step * batch_size:(step + 1) * batch_size] for k, v in rows.items()}
        epoch, offset = epoch + 1, 0


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


# --- dynamic padding / length bucketing --------------------------------------------------

def pad_batch(examples: Sequence[dict], batch_size: int, *, pad_id: int, pad_multiple: int = 8
              ) -> dict[str, np.ndarray]:
    """`ids_BT`, `mask_BT`, `labels_BT` (IGNORE on padding), `weights_B` (0 for filler rows).

    T is the longest example rounded up to `pad_multiple` (few distinct shapes to compile).
    """
    longest = max(len(e["ids"]) for e in examples)
    T = pad_multiple * math.ceil(longest / pad_multiple)
    ids_BT = np.full((batch_size, T), pad_id, np.int32)
    mask_BT = np.zeros((batch_size, T), bool)
    labels_BT = np.full((batch_size, T), IGNORE, np.int32)
    weights_B = np.zeros((batch_size,), np.float32)
    for b, example in enumerate(examples):
        L = len(example["ids"])
        ids_BT[b, :L], mask_BT[b, :L], weights_B[b] = example["ids"], True, 1.0
        if "labels" in example:
            labels_BT[b, :L] = example["labels"]
    return {"ids": ids_BT, "mask": mask_BT, "labels": labels_BT, "weights": weights_B}


def bucketed_epoch(lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int,
                   bucket_batches: int) -> list[np.ndarray]:
    """One epoch's batches of example indices: shuffle, sort windows of `bucket_batches`
    batches by length, cut, shuffle the batches. Full batches only."""
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths))
    order = order[:len(order) - len(order) % batch_size]
    window = batch_size * max(bucket_batches, 1)
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in np.random.default_rng([seed, epoch, 1]).permutation(len(batches))]


def token_batches(examples: Sequence[dict], batch_size: int, *, seed: int, start_step: int,
                  pad_id: int, pad_multiple: int = 8, bucket_batches: int = 8,
                  transform: Callable[[dict], dict] | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Endless bucketed, padded training batches from `start_step` (exact resume).

    `transform` (e.g. a partial of `mlm_mask`) runs per example after `index` and `epoch`
    are added, so per-example randomness is a function of (seed, epoch, index) too.
    """
    lengths = np.asarray([len(e["ids"]) for e in examples])
    per_epoch = len(examples) // batch_size
    if per_epoch == 0:
        raise ValueError(f"{len(examples)} examples is fewer than batch_size={batch_size}")
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        batches = bucketed_epoch(lengths, batch_size, seed=seed, epoch=epoch,
                                 bucket_batches=bucket_batches)
        for index_B in batches[offset:]:
            chosen = [{**examples[i], "index": int(i), "epoch": epoch} for i in index_B]
            if transform is not None:
                chosen = [transform(e) for e in chosen]
            yield pad_batch(chosen, batch_size, pad_id=pad_id, pad_multiple=pad_multiple)
        epoch, offset = epoch + 1, 0


def eval_token_batches(examples: Sequence[dict], batch_size: int, *, pad_id: int,
                       pad_multiple: int = 8) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, sorted by length; the last batch filled with weight-0 rows.

    Each batch also carries `index_B` (the example each row came from; -1 for filler)."""
    order = np.argsort([len(e["ids"]) for e in examples], kind="stable")
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = pad_batch([examples[i] for i in index], batch_size, pad_id=pad_id,
                          pad_multiple=pad_multiple)
        batch["index"] = np.full((batch_size,), -1, np.int64)
        batch["index"][:len(index)] = index
        yield batch
