"""The one batcher: every task's examples -> length-bucketed, padded (or packed) batches.

An epoch's order is a pure function of (seed, epoch) and every epoch has the same number of
steps, so step -> (epoch, batch) is exact: a resumed run sees the batches the interrupted
one would have. Examples are a sequence of dicts (`ids` (L,), optional `token_types` (L,),
`labels` (L,) per token or a scalar per example; or `images`); `examples.Examples` /
`ImageExamples` index to the same dicts.

Batches: `ids_BT`, `mask_BT`, `token_types_BT`, `labels` (`_BT`, IGNORE on padding, or `_B`),
`weights_B` (0 for filler rows); image batches `images_BHWC`, `labels_B`, `weights_B`. Packed
batches add `segment_ids_BT` (1, 2, ... per row; 0 = padding) and `positions_BT`; documents
are cut at row ends (`pack`: language modelling) or kept whole (`pack_whole`: chat SFT).

Axis legend: N examples (or packed rows), B batch, T padded / packed length, L one example.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np

from lmx.data.transforms import IGNORE

Transform = Callable[[dict], dict]


# --- padding -----------------------------------------------------------------------------

def pad_batch(rows: Sequence[dict], batch_size: int, *, pad_id: int, pad_multiple: int = 8,
              longest: int = 0) -> dict[str, np.ndarray]:
    """`rows` padded to B = `batch_size` rows (filler: weight 0) and T = the longest rounded up
    to `pad_multiple` (few distinct shapes to compile); `longest` > 0: the longest row of the
    global batch these rows are part of (one host's rows take the global batch's T). Keys
    other than ids / token_types / labels / images are dropped."""
    if "images" in rows[0]:
        return _stack_images(rows, batch_size)
    longest = max([longest] + [len(r["ids"]) for r in rows])
    T = pad_multiple * math.ceil(longest / pad_multiple)
    ids_BT = np.full((batch_size, T), pad_id, np.int32)
    mask_BT = np.zeros((batch_size, T), bool)
    token_types_BT = np.zeros((batch_size, T), np.int32)
    per_token = "labels" not in rows[0] or np.ndim(rows[0]["labels"]) == 1
    labels = (np.full((batch_size, T), IGNORE, np.int32) if per_token
              else np.zeros((batch_size,), np.int32))
    weights_B = np.zeros((batch_size,), np.float32)
    for b, row in enumerate(rows):
        L = len(row["ids"])
        ids_BT[b, :L], mask_BT[b, :L], weights_B[b] = row["ids"], True, 1.0
        if "token_types" in row:
            token_types_BT[b, :L] = row["token_types"]
        if "labels" in row:
            if per_token:
                labels[b, :L] = row["labels"]
            else:
                labels[b] = row["labels"]
    return {"ids": ids_BT, "mask": mask_BT, "token_types": token_types_BT, "labels": labels,
            "weights": weights_B}


# Fill of each padded-batch field when a batch is widened to a longer T (`mixed_batch`).
_WIDEN_FILL = {"ids": None, "mask": False, "token_types": 0, "labels": IGNORE}


def mixed_batch(batches: Sequence[dict[str, np.ndarray]], *, pad_id: int
                ) -> dict[str, np.ndarray]:
    """Padded batches of several tasks stacked into one (rows in order) for a mixed-adapter
    step: batch n's rows get `adapter_ids` n, and every batch is widened on the right to the
    longest T (ids `pad_id`, mask off, per-token labels IGNORE), which a masked model does not
    see. Packed batches (segments) and images are refused: their rows do not widen this way."""
    for n, batch in enumerate(batches):
        if set(batch) != set(_WIDEN_FILL) | {"weights"}:
            raise ValueError(f"mixed_batch: batch {n} has fields {sorted(batch)}; expected the "
                             f"padded text batches of pad_batch ({sorted(_WIDEN_FILL)}, weights)")
    T = max(b["ids"].shape[1] for b in batches)

    def widen(key: str, x: np.ndarray) -> np.ndarray:
        if key not in _WIDEN_FILL or x.ndim != 2:  # weights_B, sequence labels_B
            return x
        fill = pad_id if key == "ids" else _WIDEN_FILL[key]
        return np.pad(x, ((0, 0), (0, T - x.shape[1])), constant_values=fill)

    out = {k: np.concatenate([widen(k, b[k]) for b in batches]) for k in batches[0]}
    out["adapter_ids"] = np.concatenate([np.full(len(b["ids"]), n, np.int32)
                                         for n, b in enumerate(batches)])
    return out


def _stack_images(rows: Sequence[dict], batch_size: int) -> dict[str, np.ndarray]:
    images = np.zeros((batch_size, *np.shape(rows[0]["images"])), np.float32)
    labels_B = np.zeros((batch_size,), np.int32)
    weights_B = np.zeros((batch_size,), np.float32)
    for b, row in enumerate(rows):
        images[b], labels_B[b], weights_B[b] = row["images"], row["labels"], 1.0
    return {"images": images, "labels": labels_B, "weights": weights_B}


# --- packing -----------------------------------------------------------------------------

def pack(documents: Sequence[np.ndarray], seq_len: int, pad_id: int,
         labels: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Concatenate documents and cut into rows of `seq_len`; every token lands exactly once.

    A document cut by a row end continues in the next row as a new segment. Returns `ids_NT`,
    `segment_ids_NT` (1, 2, ... per row; 0 = padding, only in the last row) and
    `positions_NT` (0-based within each segment) for segment-masked attention; with `labels`
    (one array per document, as long as it) also `labels_NT` (IGNORE on padding).
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
    out = {"ids": ids.reshape(N, seq_len), "segment_ids": segment_ids_NT,
           "positions": positions_NT}
    if labels is not None:
        flat = np.full(N * seq_len, IGNORE, np.int32)
        if total:
            flat[:total] = np.concatenate([np.asarray(x, np.int32) for x in labels])
        out["labels"] = flat.reshape(N, seq_len)
    return out


def pack_whole(documents: Sequence[np.ndarray], seq_len: int, pad_id: int,
               labels: Sequence[np.ndarray] | None = None, open_rows: int = 16
               ) -> dict[str, np.ndarray]:
    """`pack`'s arrays, but every document whole in one row (conversations for chat SFT:
    a cut one would lose its context): each goes to the first of the last `open_rows` rows
    with room, else starts a new row; the rest of a row is padding (segment 0). Segments
    number 1, 2, ... left to right; a document longer than `seq_len` is an error."""
    fill, place = [], []
    for d, document in enumerate(documents):
        L = len(document)
        if L > seq_len:
            raise ValueError(f"document {d} has {L} tokens, more than a row's {seq_len}")
        row = next((r for r in range(max(0, len(fill) - open_rows), len(fill))
                    if fill[r] + L <= seq_len), None)
        if row is None:
            row = len(fill)
            fill.append(0)
        place.append((row, fill[row]))
        fill[row] += L
    N = max(1, len(fill))
    out = {"ids": np.full((N, seq_len), pad_id, np.int32),
           "segment_ids": np.zeros((N, seq_len), np.int32),
           "positions": np.zeros((N, seq_len), np.int32)}
    if labels is not None:
        out["labels"] = np.full((N, seq_len), IGNORE, np.int32)
    segments = np.zeros(N, np.int32)
    for d, (row, start) in enumerate(place):
        span = slice(start, start + len(documents[d]))
        segments[row] += 1
        out["ids"][row, span] = documents[d]
        out["segment_ids"][row, span] = segments[row]
        out["positions"][row, span] = np.arange(len(documents[d]))
        if labels is not None:
            out["labels"][row, span] = labels[d]
    return out


def _packed_rows(rows: Sequence[dict], seq_len: int, pad_id: int, whole: bool = False
                 ) -> dict[str, np.ndarray]:
    """`pack` (or `pack_whole`) of the rows' ids (and per-token labels) as a task batch of N
    rows: `mask_NT` (= segment_ids > 0), zero `token_types_NT`, `labels_NT` (IGNORE without
    labels), and weights 1 (padding carries no loss through its labels)."""
    labels = [r["labels"] for r in rows] if rows and "labels" in rows[0] else None
    packed = (pack_whole if whole else pack)([r["ids"] for r in rows], seq_len, pad_id, labels)
    N = len(packed["ids"])
    if labels is None:
        packed["labels"] = np.full((N, seq_len), IGNORE, np.int32)
    return {**packed, "mask": packed["segment_ids"] > 0,
            "token_types": np.zeros((N, seq_len), np.int32),
            "weights": np.ones((N,), np.float32)}


def first_fit_rows(lengths_N: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """Whole examples into rows of `seq_len` tokens, first fit decreasing (none is cut):
    each row's example indices. A pure function of the lengths."""
    if len(lengths_N) and int(lengths_N.max()) > seq_len:
        raise ValueError(f"an example of {int(lengths_N.max())} tokens does not fit "
                         f"data.pack_length={seq_len}")
    free_R = np.empty(len(lengths_N), np.int64)
    rows: list[list[int]] = []
    for i in np.argsort(-lengths_N, kind="stable"):
        fits = np.flatnonzero(free_R[:len(rows)] >= lengths_N[i])
        if fits.size:
            rows[fits[0]].append(int(i))
            free_R[fits[0]] -= lengths_N[i]
        else:
            free_R[len(rows)] = seq_len - lengths_N[i]
            rows.append([int(i)])
    return [np.asarray(r, np.int64) for r in rows]


def pack_rows(rows: Sequence[dict], row_of: Sequence[np.ndarray], seq_len: int, pad_id: int
              ) -> dict[str, np.ndarray]:
    """Examples (`rows`) laid into packed rows (`row_of`: each row's indices into `rows`):
    `ids_NT`, `mask_NT`, `token_types_NT`, `segment_ids_NT` (1, 2, ... per row, 0 padding),
    `positions_NT` (restarting per segment), `labels_NT` (per-token labels kept; an example's
    one label at its segment's first token; IGNORE elsewhere), `weights_N` (1)."""
    N = len(row_of)
    out = {"ids": np.full((N, seq_len), pad_id, np.int32), "mask": np.zeros((N, seq_len), bool),
           "token_types": np.zeros((N, seq_len), np.int32),
           "segment_ids": np.zeros((N, seq_len), np.int32),
           "positions": np.zeros((N, seq_len), np.int32),
           "labels": np.full((N, seq_len), IGNORE, np.int32), "weights": np.ones((N,), np.float32)}
    for n, members in enumerate(row_of):
        t = 0
        for segment, i in enumerate(members, start=1):
            row = rows[i]
            L = len(row["ids"])
            out["ids"][n, t:t + L], out["segment_ids"][n, t:t + L] = row["ids"], segment
            out["positions"][n, t:t + L] = np.arange(L)
            if "token_types" in row:
                out["token_types"][n, t:t + L] = row["token_types"]
            if "labels" in row:
                if np.ndim(row["labels"]) == 1:
                    out["labels"][n, t:t + L] = row["labels"]
                else:
                    out["labels"][n, t] = row["labels"]
            t += L
    out["mask"] = out["segment_ids"] > 0
    return out


_FIT_CACHE: dict[tuple, list[np.ndarray]] = {}


def _epoch_rows(lengths_N: np.ndarray, seq_len: int, *, seed: int, epoch: int
                ) -> list[np.ndarray]:
    """One epoch's packed rows of example indices: the first-fit-decreasing layout of the
    lengths (the same every epoch, so every epoch has the same number of rows), its slots
    filled by a shuffle of the examples of each length (rng [seed, epoch]), rows shuffled
    (rng [seed, epoch, 1])."""
    key = (hash(lengths_N.tobytes()), len(lengths_N), seq_len)
    if key not in _FIT_CACHE:
        _FIT_CACHE.clear()
        _FIT_CACHE[key] = first_fit_rows(lengths_N, seq_len)
    layout = _FIT_CACHE[key]
    rng = np.random.default_rng([seed, epoch])
    swap = np.arange(len(lengths_N))
    by_length = np.argsort(lengths_N, kind="stable")
    bounds = np.flatnonzero(np.diff(lengths_N[by_length])) + 1
    for group in np.split(by_length, bounds):
        swap[group] = rng.permutation(group)
    rows = [swap[r] for r in layout]
    return [rows[i] for i in np.random.default_rng([seed, epoch, 1]).permutation(len(rows))]


def packed_rows_per_step(lengths_N: np.ndarray, batch_size: int, pack_length: int) -> int:
    """Rows a packed step holds so that it sees about `batch_size` examples on average."""
    return max(1, round(batch_size * float(np.mean(lengths_N)) / pack_length))


# --- epoch order -------------------------------------------------------------------------

def lengths_of(examples) -> np.ndarray:
    """Each example's length in tokens (`Examples.lengths`, or `len(ids)` of each dict)."""
    if hasattr(examples, "lengths"):
        return examples.lengths
    return np.asarray([len(e["ids"]) for e in examples])


def epoch_order(lengths_N: np.ndarray, batch_size: int, *, seed: int, epoch: int,
                bucket_batches: int) -> list[np.ndarray]:
    """One epoch's batches of example indices: shuffle (rng [seed, epoch]), drop the last
    N % B, sort windows of `bucket_batches` batches by length (stable), cut into batches,
    shuffle the batches (rng [seed, epoch, 1]). Full batches only."""
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths_N))
    order = order[:len(order) - len(order) % batch_size]
    window = batch_size * max(bucket_batches, 1)
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths_N[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in np.random.default_rng([seed, epoch, 1]).permutation(len(batches))]


def steps_per_epoch(examples, batch_size: int, *, pack_length: int = 0,
                    whole_examples: bool = False) -> int:
    """Full batches an epoch: N // B, or (packed rows) // B with `pack_length` (cut
    documents), or with `whole_examples` the first-fit rows // the rows of a step."""
    if not pack_length:
        return len(examples) // batch_size
    lengths_N = lengths_of(examples)
    if whole_examples:
        rows = len(_epoch_rows(lengths_N, pack_length, seed=0, epoch=0))
        return rows // packed_rows_per_step(lengths_N, batch_size, pack_length)
    total = int(lengths_N.sum())
    return math.ceil(total / pack_length) // batch_size


def _row(examples, index: int, epoch: int, transform: Transform | None) -> dict:
    """Example `index` with `index` and `epoch` added (so a transform's randomness can be a
    function of (seed, epoch, index)), transformed."""
    row = {**examples[index], "index": int(index), "epoch": epoch}
    return transform(row) if transform is not None else row


# --- streams -----------------------------------------------------------------------------

def train_batches(examples, batch_size: int, *, seed: int, start_step: int, pad_id: int,
                  pad_multiple: int = 8, bucket_batches: int = 8,
                  transform: Transform | None = None, pack_length: int = 0,
                  pack_whole: bool = False, whole_examples: bool = False,
                  rows: slice | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches from `start_step` (exact resume).

    `rows`: only these rows of every global batch (one host's share, `lmx.scale.distributed.
    process_rows`), padded to the global batch's length (from `lengths`, no other example
    read): the rows of the batch a single process makes.

    Padded mode: `epoch_order` batches, each padded by `pad_batch`. Packed mode
    (`pack_length` T > 0): the epoch's examples, shuffled (rng [seed, epoch]), packed into
    rows of T (`pack`), B rows a step; the last rows % B rows of an epoch are dropped.
    `transform` (e.g. a partial of `transforms.mlm_mask`) runs per example; in packed mode
    it must keep each example's length (the rows an epoch depend on the lengths only).
    `pack_whole`: examples are never cut (`pack_whole`); an epoch still has
    ceil(tokens / T) // B steps (a lower bound on its rows), so the rows a wasteful packing
    adds at the end of the shuffled order are dropped that epoch (a different tail each
    epoch; few with `pack_whole`'s first fit).
    With `whole_examples` (classification), no example is cut: `_epoch_rows`' first-fit
    rows, `packed_rows_per_step` of them a step (about `batch_size` examples), `pack_rows`
    (a sequence label sits on its segment's first token).
    """
    per_epoch = steps_per_epoch(examples, batch_size, pack_length=pack_length,
                                whole_examples=whole_examples)
    if per_epoch == 0:
        what = f"{len(examples)} examples" if not pack_length else (
            f"{int(lengths_of(examples).sum())} tokens in rows of {pack_length}")
        raise ValueError(f"{what} make fewer than batch_size={batch_size} rows")
    epoch, offset = divmod(start_step, per_epoch)
    lengths_N = lengths_of(examples)
    if rows is not None and pack_length:
        raise ValueError("per-host rows of packed batches are not supported (packing reads "
                         "every example of the epoch)")
    while True:
        if pack_length and whole_examples:
            R = packed_rows_per_step(lengths_N, batch_size, pack_length)
            epoch_rows = _epoch_rows(lengths_N, pack_length, seed=seed, epoch=epoch)
            for step in range(offset, per_epoch):
                members = epoch_rows[step * R:(step + 1) * R]
                flat = np.concatenate(members)
                local = {int(i): j for j, i in enumerate(flat)}
                batch_rows = [_row(examples, i, epoch, transform) for i in flat]
                yield pack_rows(batch_rows, [[local[int(i)] for i in m] for m in members],
                                pack_length, pad_id)
        elif pack_length:
            yield from _packed_epoch(examples, batch_size, seed=seed, epoch=epoch,
                                     offset=offset, per_epoch=per_epoch,
                                     pack_length=pack_length, pad_id=pad_id,
                                     transform=transform, whole=pack_whole)
        else:
            batches = epoch_order(lengths_N, batch_size, seed=seed, epoch=epoch,
                                  bucket_batches=bucket_batches)
            for index_B in batches[offset:]:
                mine = index_B if rows is None else index_B[rows]
                longest = int(lengths_N[index_B].max()) if rows is not None else 0
                yield pad_batch([_row(examples, i, epoch, transform) for i in mine], len(mine),
                                pad_id=pad_id, pad_multiple=pad_multiple, longest=longest)
        epoch, offset = epoch + 1, 0


def _packed_epoch(examples, batch_size: int, *, seed: int, epoch: int, offset: int,
                  per_epoch: int, pack_length: int, pad_id: int,
                  transform: Transform | None, whole: bool = False
                  ) -> Iterator[dict[str, np.ndarray]]:
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    rows = [_row(examples, i, epoch, transform) for i in order]
    packed = _packed_rows(rows, pack_length, pad_id, whole)
    if not whole and len(packed["ids"]) // batch_size != per_epoch:
        raise ValueError("the transform changed example lengths: packed mode needs them kept")
    for step in range(offset, per_epoch):
        yield {k: v[step * batch_size:(step + 1) * batch_size] for k, v in packed.items()}


def eval_batches(examples, batch_size: int, *, pad_id: int, pad_multiple: int = 8
                 ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Every example once, sorted by length (stable); the last batch filled with weight-0
    rows. Yields (batch, `index_B`): the example each row came from, -1 for filler."""
    order = np.argsort(lengths_of(examples), kind="stable")
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = pad_batch([examples[i] for i in index], batch_size, pad_id=pad_id,
                          pad_multiple=pad_multiple)
        index_B = np.full((batch_size,), -1, np.int64)
        index_B[:len(index)] = index
        yield batch, index_B
