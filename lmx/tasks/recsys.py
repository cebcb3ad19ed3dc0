"""Next-item recommendation as masked-item modelling over each user's rating sequence
(BERT4Rec, Sun et al. 2019) on a MovieLens ratings.csv (or tfds:movielens/latest-small-ratings),
with a popularity baseline.

Protocol (BERT4Rec / SASRec leave-one-out, full ranking):
  * a user's items in time order (ties keep file order); movieIds become ids 2.. in
    ascending movieId order; id 0 = padding, id 1 = [MASK]; vocabulary V = items + 2.
  * test target = the last item, validation target = the second to last; training sees the
    rest. Both evaluation splits always come out of `data.train_file` (the trainer scores
    test once, at the end); users with fewer than 3 ratings go to training whole.
  * an evaluation row is the items before the target, cut to the most recent
    `data.max_length - 1`, then [MASK]; the model's scores at [MASK] rank every item
    (no sampled negatives). The user's earlier items (all of them, not only those kept after
    the cut) are excluded from the ranking, as are pad and [MASK]; ties count against the
    target (`metrics.ranking`). Full-ranking numbers are far below sampled-negative ones.
  * training rows: each user's training items cut, from the most recent end, into chunks of
    `data.max_length`; every epoch each item is masked with `data.mlm_rate` (all picked items
    become [MASK]: no 80/10/10), and a `FORCE_LAST_RATE` share of the rows mask only their
    last item instead, which is what evaluation asks of the model.
  * rows are right-aligned (left padding) in one width, so the newest item, and the [MASK]
    of an evaluation row, always sit at the last position.
  * popularity baseline: items ranked by their count in the training items, with the same
    exclusions; ties go to the lower id, so it is a real top-k list.

Axis legend: B batch, T length, V vocabulary (items + 2), N evaluation rows, L one row.
"""
from __future__ import annotations

import functools
from typing import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmx import metrics
from lmx.data import batching, sources, transforms
from lmx.models import transformer
from lmx.tasks import base as tasks

PAD, MASK, FIRST_ITEM = 0, 1, 2
IGNORE = transforms.IGNORE
FORCE_LAST_RATE = 0.1  # BERT4Rec adds rows with only the last item masked
RANKING_KS = (1, 10)


def user_sequences(ratings: dict[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each user's item ids (2..) in time order, users by ascending userId; and the movieId
    of every item id from 2 on."""
    movie_ids, item_N = np.unique(ratings["item_id"], return_inverse=True)
    users_N = ratings["user_id"]
    order = np.lexsort((np.arange(len(users_N)), ratings["timestamp"], users_N))
    items = (item_N[order] + FIRST_ITEM).astype(np.int32)
    cuts = np.flatnonzero(np.diff(users_N[order])) + 1
    return np.split(items, cuts), movie_ids


def _eval_row(history: np.ndarray, target: int, max_length: int) -> dict:
    kept = history[len(history) - (max_length - 1):] if max_length > 1 else history[:0]
    ids = np.append(kept, MASK).astype(np.int32)
    labels = np.full(len(ids), IGNORE, np.int32)
    labels[-1] = target
    # A target rated before (a duplicate row) stays rankable: only other items are excluded.
    seen = np.setdiff1d(history, [target]).astype(np.int32)
    return {"ids": ids, "labels": labels, "target": int(target), "seen": seen}


def _chunks(items: np.ndarray, max_length: int) -> list[np.ndarray]:
    """Consecutive pieces of at most `max_length`, cut from the most recent end."""
    ends = range(len(items), 0, -max_length)
    return [items[max(end - max_length, 0):end] for end in ends]


def leave_one_out(sequences: Sequence[np.ndarray], max_length: int
                  ) -> tuple[list[np.ndarray], list[dict], list[dict]]:
    """(training items per user, validation rows, test rows); see the module docstring."""
    train, validation, test = [], [], []
    for items in sequences:
        if len(items) < 3:
            train.append(items)
            continue
        train.append(items[:-2])
        validation.append(_eval_row(items[:-2], items[-2], max_length))
        test.append(_eval_row(items[:-1], items[-1], max_length))
    return train, validation, test


def training_rows(train_items: Sequence[np.ndarray], max_length: int) -> list[dict]:
    return [{"ids": chunk} for items in train_items for chunk in _chunks(items, max_length)]


def mask_items(example: dict, *, seed: int, rate: float,
               force_last_rate: float = FORCE_LAST_RATE) -> dict:
    """Masked-item transform of `example["ids"]` (L,): each item becomes [MASK] with `rate`
    (a row with none picked gets one at random); with `force_last_rate` only the last item
    is masked. Randomness from (seed, epoch, index), as `transforms.mlm_mask`."""
    ids_L = np.asarray(example["ids"])
    rng = np.random.default_rng([seed, int(example.get("epoch", 0)), int(example["index"])])
    if rng.random() < force_last_rate:
        picked_L = np.arange(len(ids_L)) == len(ids_L) - 1
    else:
        picked_L = rng.random(len(ids_L)) < rate
        if not picked_L.any():
            picked_L[rng.integers(len(ids_L))] = True
    return {**example, "ids": np.where(picked_L, MASK, ids_L).astype(np.int32),
            "labels": np.where(picked_L, ids_L, IGNORE).astype(np.int32)}


def left_pad(example: dict, width: int) -> dict:
    """Right-aligns `ids` (and `labels`) in `width` columns: the most recent item always sits
    at position width - 1, as in SASRec and BERT4Rec, so learned positions read as recency."""
    n = width - len(example["ids"])
    out = {**example, "ids": np.concatenate([np.full(n, PAD, np.int32), example["ids"]])}
    if "labels" in example:
        out["labels"] = np.concatenate([np.full(n, IGNORE, np.int32), example["labels"]])
    return out


def _real_mask(batch: dict) -> dict:
    """`batching.pad_batch` marks the first L columns real; with left padding the real ones
    are the non-pad ids."""
    return {**batch, "mask": batch["ids"] != PAD}


def exclude_seen(scores_NV: np.ndarray, rows: Sequence[dict]) -> np.ndarray:
    """A float64 copy with pad, [MASK] and each row's `seen` items at -inf."""
    out_NV = np.array(scores_NV, np.float64)
    out_NV[:, :FIRST_ITEM] = -np.inf
    for n, row in enumerate(rows):
        out_NV[n, row["seen"]] = -np.inf
    return out_NV


def rank_metrics(batches: Iterable[tuple[np.ndarray, Sequence[dict]]]) -> dict[str, float]:
    """HR@k / NDCG@k (k in RANKING_KS; NDCG@1 = HR@1 is left out) over (scores_NV, rows)
    batches, full ranking with `exclude_seen`."""
    sums, count = {}, 0
    for scores_NV, rows in batches:
        if not len(rows):
            continue
        target_N = np.asarray([row["target"] for row in rows])
        ranked_NV = exclude_seen(scores_NV, rows)
        for k in RANKING_KS:
            for name, value in metrics.ranking(ranked_NV, target_N, k).items():
                sums[name] = sums.get(name, 0.0) + value * len(rows)
        count += len(rows)
    if not count:
        raise ValueError("no evaluation rows to rank")
    return {name: value / count for name, value in sums.items() if name != "ndcg@1"}


def popularity_scores(train_items: Sequence[np.ndarray], vocab_size: int) -> np.ndarray:
    """(V,) scores ranking items by training count, ties to the lower id; pad/[MASK] -inf."""
    counts_V = np.bincount(np.concatenate(train_items), minlength=vocab_size)
    order_V = np.lexsort((np.arange(vocab_size), -counts_V))  # most popular first
    scores_V = np.empty(vocab_size, np.float64)
    scores_V[order_V] = -np.arange(vocab_size, dtype=np.float64)
    scores_V[:FIRST_ITEM] = -np.inf
    return scores_V


def popularity_metrics(train_items: Sequence[np.ndarray], rows: Sequence[dict],
                       vocab_size: int, batch_size: int = 1024) -> dict[str, float]:
    scores_V = popularity_scores(train_items, vocab_size)
    return rank_metrics(
        (np.broadcast_to(scores_V, (len(rows[i:i + batch_size]), vocab_size)),
         rows[i:i + batch_size]) for i in range(0, len(rows), batch_size))


class NextItem(tasks.Task):
    """BERT4Rec on MovieLens: masked items in training, [MASK] appended at evaluation."""

    plot_metrics = ("hr@1", "hr@10", "ndcg@10")

    @property
    def width(self) -> int:
        """Every row's length: data.max_length rounded up to data.pad_multiple."""
        d = self.config.data
        return -(-d.max_length // d.pad_multiple) * d.pad_multiple

    def load(self, config: ml_collections.ConfigDict, workdir: str) -> tasks.Datasets:
        d = config.data
        if d.validation_file or d.test_file:
            raise ValueError("data.kind='movielens' splits data.train_file leave-one-out; "
                             "data.validation_file and data.test_file must be empty")
        if config.model.pretrained:
            raise ValueError("data.kind='movielens' trains from scratch (items are the "
                             "vocabulary): config.model.pretrained must be empty")
        max_len = transformer.SIZES[config.model.size].max_len
        if self.width > max_len:  # positions past the table would read NaN embeddings
            raise ValueError(f"config.data.max_length={d.max_length} padded to a multiple of "
                             f"data.pad_multiple={d.pad_multiple} is {self.width}, more than "
                             f"the {config.model.size!r} model's {max_len} positions")
        ratings = sources.read_ratings(d.train_file, d.train_split, d)
        sequences, self.movie_ids = user_sequences(ratings)
        self.train_items, validation, test = leave_one_out(sequences, d.max_length)
        if not validation:
            raise ValueError(f"{d.train_file}: no user has 3 or more ratings to evaluate on")
        return tasks.Datasets(training_rows(self.train_items, d.max_length), validation, test,
                              [], PAD, vocab_size=len(self.movie_ids) + FIRST_ITEM)

    def train_batches(self, split, start_step: int) -> Iterator[dict]:
        c = self.config
        mask = functools.partial(mask_items, seed=c.seed, rate=c.data.mlm_rate)
        for batch in self.bucketed_batches(split, start_step,
                                           transform=lambda e: left_pad(mask(e), self.width)):
            yield _real_mask(batch)

    def eval_batches(self, split) -> Iterator[tuple[dict, dict]]:
        c = self.config
        rows = [left_pad(row, self.width) for row in split]
        for batch, index_B in batching.eval_batches(rows, c.train.eval_batch_size, pad_id=PAD,
                                                    pad_multiple=c.data.pad_multiple):
            yield _real_mask(batch), {"index": index_B}

    @staticmethod
    def outputs(logits_BTV: jax.Array, batch: dict) -> dict:
        """The scores at each row's labelled position (its [MASK]): (B, V)."""
        position_B = jnp.argmax(batch["labels"] >= 0, axis=1)
        return {"scores": logits_BTV[jnp.arange(logits_BTV.shape[0]), position_B]}

    def scores(self, split, collected: list[tuple[dict, dict]]) -> dict[str, float]:
        def batches():
            for host, out in collected:
                real = host["index"] >= 0
                yield out["scores"][real], [split[i] for i in host["index"][real]]
        return rank_metrics(batches())

    def headline(self) -> str:
        return "ndcg@10"

    def finish(self, trainer, workdir: str) -> dict:
        """The popularity baseline on validation (and test), same protocol as the model."""
        vocab_size = len(self.movie_ids) + FIRST_ITEM
        baseline = {name: popularity_metrics(self.train_items, trainer.datasets[name],
                                             vocab_size)
                    for name in ("validation", "test") if trainer.datasets[name] is not None}
        for name, values in baseline.items():
            print(f"popularity baseline, {name}: " +
                  " ".join(f"{k}={v:.4f}" for k, v in values.items()))
        return {"popularity_baseline": baseline}
