"""Metrics: classification (accuracy, macro-F1, MCC), top-k, perplexity / bits per character,
recommendation ranking (HR@k, NDCG@k) and entity-level scores for BIO / IOB tagging.

Axis legend: N examples (rows), C classes or candidate items, M sampled negatives.
"""
from __future__ import annotations

import collections
from typing import Sequence

import numpy as np
from sklearn import metrics as skm


def classification(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (over labels present in either array, as sklearn defines it)."""
    return {
        "accuracy": float(skm.accuracy_score(labels, predictions)),
        "macro_f1": float(skm.f1_score(labels, predictions, average="macro", zero_division=0)),
    }


def matthews(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Matthews correlation coefficient (multi-class, sklearn's definition)."""
    return float(skm.matthews_corrcoef(labels, predictions))


def confusion(labels: np.ndarray, predictions: np.ndarray, names: Sequence[str],
              top: int = 10) -> dict:
    """What a person reads off a confusion matrix: the `top` most frequent (true -> predicted)
    mistakes with their counts and share of the true class, and the `top` classes with the
    lowest recall (classes with no example are left out)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    matrix_CC = skm.confusion_matrix(labels, predictions, labels=np.arange(len(names)))
    support_C = matrix_CC.sum(1)
    off_CC = matrix_CC * (1 - np.eye(len(names), dtype=matrix_CC.dtype))
    pairs = sorted(((int(off_CC[t, p]), t, p) for t, p in zip(*np.nonzero(off_CC))),
                   key=lambda x: (-x[0], x[1], x[2]))[:top]
    present = np.nonzero(support_C)[0]
    recall_C = np.diag(matrix_CC)[present] / support_C[present]
    lowest = present[np.argsort(recall_C, kind="stable")][:top]
    return {"mistakes": [{"true": names[t], "predicted": names[p], "count": n,
                          "share_of_true": n / int(support_C[t])} for n, t, p in pairs],
            "lowest_recall": [{"label": names[c], "recall": float(matrix_CC[c, c] / support_C[c]),
                               "support": int(support_C[c])} for c in lowest],
            "examples": int(support_C.sum())}


def _rank_of_target(scores_NC: np.ndarray, target_N: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target column; ties count against it (no credit for ties)."""
    scores_NC = np.asarray(scores_NC, np.float64)
    target_score_N1 = np.take_along_axis(scores_NC, np.asarray(target_N)[:, None], axis=1)
    return (scores_NC >= target_score_N1).sum(axis=1) - 1


def top_k_accuracy(logits_NC: np.ndarray, labels_N: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: the label among the k highest scores (ties count as misses)."""
    rank_N = _rank_of_target(logits_NC, labels_N)
    return {f"top{k}": float(np.mean(rank_N < k)) for k in ks}


def perplexity(nll_sum: float, num_tokens: int) -> float:
    """exp(mean NLL in nats) from a summed NLL over `num_tokens` predicted tokens."""
    return float(np.exp(nll_sum / num_tokens))


def bits_per_character(nll_sum: float, num_characters: int) -> float:
    """Summed NLL (nats, over any tokenization) divided by the characters it covers, in bits."""
    return float(nll_sum / (num_characters * np.log(2.0)))


def sample_negatives(num_items: int, exclude: list[np.ndarray], num_negatives: int,
                     seed: int) -> np.ndarray:
    """(N, num_negatives) item ids per user, uniform without replacement, none in exclude[n].

    For leave-one-out ranking against sampled negatives: put the held-out item in column 0
    of the candidates, these after it, and score with `ranking(scores_NC, zeros)`.
    """
    rng = np.random.default_rng(seed)
    negatives_NM = np.empty((len(exclude), num_negatives), np.int64)
    for n, seen in enumerate(exclude):
        allowed = np.setdiff1d(np.arange(num_items), seen)
        if len(allowed) < num_negatives:
            raise ValueError(f"user {n}: {len(allowed)} unseen items < {num_negatives} negatives")
        negatives_NM[n] = rng.choice(allowed, num_negatives, replace=False)
    return negatives_NM


def ranking(scores_NC: np.ndarray, target_N: np.ndarray, k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k of leave-one-out next-item prediction (one relevant item per row).

    C candidates per row: either the full catalogue (mask the user's already-seen items with
    -inf first) or the held-out item plus sampled negatives (`sample_negatives`, the
    BERT4Rec/NCF protocol: 100 negatives). Which one was used must go with the number: the
    full-catalogue numbers are much lower. Ties rank the target last among them.
    """
    rank_N = _rank_of_target(scores_NC, target_N)
    hit_N = rank_N < k
    return {f"hr@{k}": float(np.mean(hit_N)),
            f"ndcg@{k}": float(np.mean(np.where(hit_N, 1.0 / np.log2(rank_N + 2.0), 0.0)))}


# --- entity-level scores for BIO / IOB tagging (seqeval 1.2.2's definitions) --------------

def _split_tag(tag: str) -> tuple[str, str | None]:
    if tag == "O":
        return "O", None
    if len(tag) > 2 and tag[0] in "BI" and tag[1] == "-":
        return tag[0], tag[2:]
    raise ValueError(f"tag {tag!r}: expected O, B-TYPE or I-TYPE")


def entities(tags: Sequence[str], mode: str = "default") -> list[tuple[str, int, int]]:
    """(type, start, end inclusive) spans of one sentence.

    mode="default" is conlleval's chunking (seqeval's default): an I- after O or after another
    type starts an entity, so IOB1 and BIO both read right. mode="strict" is seqeval's
    `mode="strict", scheme=IOB2`: only B- starts an entity; an I- without its B- is no entity.
    """
    if mode not in ("default", "strict"):
        raise ValueError(f"mode={mode!r}: expected 'default' or 'strict'")
    spans, prev_prefix, prev_type, start = [], "O", None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, type_ = _split_tag(tag)
        continues = prefix == "I" and type_ == prev_type and prev_prefix != "O"
        if prev_prefix != "O" and not continues and start is not None:
            spans.append((prev_type, start, i - 1))
        if prefix == "B" or (prefix == "I" and not continues):
            start = i if (prefix == "B" or mode == "default") else None
        if mode == "strict" and prefix == "I" and not continues:
            prefix = "O"  # an orphan I- is outside: it neither starts nor continues anything
        prev_prefix, prev_type = prefix, type_
    return spans


def _prf(correct: int, predicted: int, true: int) -> tuple[float, float, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_scores(true_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]],
                  mode: str = "default") -> dict[str, dict[str, float]]:
    """Per type and "micro" / "macro" averages: precision, recall, f1, support (true entities).

    Equal to seqeval's `precision_recall_fscore_support` (zero_division=0) in the same mode.
    """
    if len(true_tags) != len(predicted_tags):
        raise ValueError(f"{len(true_tags)} true sentences but {len(predicted_tags)} predicted")
    true, predicted = collections.defaultdict(set), collections.defaultdict(set)
    for n, (t, p) in enumerate(zip(true_tags, predicted_tags)):
        if len(t) != len(p):
            raise ValueError(f"sentence {n}: {len(t)} true tags but {len(p)} predicted")
        for sets, tags in ((true, t), (predicted, p)):
            for type_, start, end in entities(tags, mode):
                sets[type_].add((n, start, end))
    report = {}
    for type_ in sorted(set(true) | set(predicted)):
        counts = len(true[type_] & predicted[type_]), len(predicted[type_]), len(true[type_])
        p, r, f = _prf(*counts)
        report[type_] = {"precision": p, "recall": r, "f1": f, "support": counts[2],
                         "correct": counts[0], "predicted": counts[1]}
    totals = [sum(v[key] for v in report.values()) for key in ("correct", "predicted", "support")]
    p, r, f = _prf(*totals)
    macro = {key: float(np.mean([v[key] for v in report.values()])) if report else 0.0
             for key in ("precision", "recall", "f1")}
    report["micro"] = {"precision": p, "recall": r, "f1": f, "support": totals[2],
                       "correct": totals[0], "predicted": totals[1]}
    report["macro"] = {**macro, "support": totals[2]}
    return report


def entity_report(true_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]],
                  mode: str = "default") -> str:
    """A conlleval-style table: token accuracy, then precision / recall / F1 per type (%)."""
    scores = entity_scores(true_tags, predicted_tags, mode)
    tokens = sum(len(t) for t in true_tags)
    right = sum(a == b for t, p in zip(true_tags, predicted_tags) for a, b in zip(t, p))
    micro = scores["micro"]
    lines = [f"processed {tokens} tokens with {micro['support']} phrases; found: "
             f"{micro['predicted']} phrases; correct: {micro['correct']}. (mode={mode})",
             f"accuracy: {100 * right / max(tokens, 1):6.2f}%",
             f"{'type':>8}  {'precision':>9}  {'recall':>7}  {'FB1':>7}  {'found':>6}  "
             f"{'support':>7}"]
    for name, row in scores.items():
        found = row.get("predicted", "")
        lines.append(f"{name:>8}  {100 * row['precision']:8.2f}%  {100 * row['recall']:6.2f}%  "
                     f"{100 * row['f1']:6.2f}%  {found:>6}  {row['support']:>7}")
    return "\n".join(lines)
