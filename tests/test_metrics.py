"""Metrics: entity scores equal seqeval's (default and strict) on random, malformed tag
sequences; top-k, ranking, perplexity and MCC on cases worked out by hand."""
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from lmx import metrics

TAGS = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "I-MISC"]


def _random_tags(rng, num_sentences):
    return [[TAGS[i] for i in rng.integers(len(TAGS), size=rng.integers(1, 12))]
            for _ in range(num_sentences)]


def _corrupt(rng, sentences):
    """Predictions: the truth with about a third of the tags replaced (I- without B- included)."""
    return [[TAGS[rng.integers(len(TAGS))] if rng.random() < 0.35 else t for t in s]
            for s in sentences]


@pytest.mark.parametrize("mode", ["default", "strict"])
def test_entity_scores_equal_seqeval_on_random_malformed_tags(mode):
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.scheme import IOB2
    kwargs = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    rng = np.random.default_rng(0)
    for trial in range(60):
        true = _random_tags(rng, int(rng.integers(1, 30)))
        predicted = _corrupt(rng, true)
        ours = metrics.entity_scores(true, predicted, mode)
        types = [k for k in ours if k not in ("micro", "macro")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not types:
                continue
            expected = seqeval.classification_report(true, predicted, output_dict=True,
                                                     zero_division=0, **kwargs)
        assert sorted(types) == sorted(k for k in expected if not k.endswith(" avg"))
        for name in types + ["micro", "macro"]:
            want = expected[name if name in types else f"{name} avg"]
            got = [ours[name][k] for k in ("precision", "recall", "f1", "support")]
            np.testing.assert_allclose(
                got, [want[k] for k in ("precision", "recall", "f1-score", "support")],
                atol=1e-12, err_msg=f"trial {trial} {name}")


def test_default_entities_equal_seqeval_get_entities():
    sequence_labeling = pytest.importorskip("seqeval.metrics.sequence_labeling")
    rng = np.random.default_rng(1)
    for tags in _random_tags(rng, 300):
        assert metrics.entities(tags) == sequence_labeling.get_entities(tags)


def test_entity_modes_differ_on_an_orphan_inside_tag():
    tags = ["I-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-ORG"]
    assert metrics.entities(tags, "default") == [("PER", 0, 1), ("LOC", 3, 4), ("ORG", 5, 5)]
    assert metrics.entities(tags, "strict") == [("LOC", 3, 4)]
    with pytest.raises(ValueError, match="expected O, B-TYPE or I-TYPE"):
        metrics.entities(["O", "E-PER"])


def test_entity_report_table():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    report = metrics.entity_report(true, predicted)
    assert "processed 6 tokens with 3 phrases; found: 3 phrases; correct: 2." in report
    assert "accuracy:  83.33%" in report
    per_line = {line.split()[0]: line for line in report.splitlines()[3:]}
    assert per_line["PER"].split()[1:4] == ["100.00%", "100.00%", "100.00%"]
    assert per_line["ORG"].split()[1:4] == ["50.00%", "100.00%", "66.67%"]
    assert per_line["micro"].split()[1:4] == ["66.67%", "66.67%", "66.67%"]


def test_top_k_accuracy_matches_sklearn_and_ties_count_against():
    rng = np.random.default_rng(2)
    logits_NC = rng.normal(size=(200, 12))
    labels_N = rng.integers(12, size=200)
    scores = metrics.top_k_accuracy(logits_NC, labels_N)
    assert scores["top1"] == skm.accuracy_score(labels_N, logits_NC.argmax(1))
    assert scores["top5"] == skm.top_k_accuracy_score(labels_N, logits_NC, k=5,
                                                      labels=np.arange(12))
    assert metrics.top_k_accuracy(np.zeros((3, 4)), np.array([0, 1, 2]), ks=(1, 4)) == {
        "top1": 0.0, "top4": 1.0}


def test_ranking_hr_ndcg_by_hand():
    scores_NC = np.array([[0.9, 0.1, 0.5], [0.1, 0.9, 0.5], [0.2, 0.3, 0.1]])
    # the target (column 0) ranks 0, 2 and 1: hits at k=2 for rows 0 and 2
    out = metrics.ranking(scores_NC, np.zeros(3, np.int64), k=2)
    assert out["hr@2"] == pytest.approx(2 / 3)
    assert out["ndcg@2"] == pytest.approx((1.0 + 1 / math.log2(3)) / 3)
    # a constant scorer gets no credit from ties
    assert metrics.ranking(np.zeros((4, 101)), np.zeros(4, np.int64))["hr@10"] == 0.0


def test_sample_negatives_avoid_seen_items_and_are_seeded():
    seen = [np.array([0, 1, 2]), np.array([5])]
    negatives = metrics.sample_negatives(10, seen, 6, seed=0)
    assert negatives.shape == (2, 6)
    assert not set(negatives[0]) & {0, 1, 2} and 5 not in negatives[1]
    assert all(len(set(row)) == 6 for row in negatives)
    np.testing.assert_array_equal(negatives, metrics.sample_negatives(10, seen, 6, seed=0))
    with pytest.raises(ValueError, match="unseen items"):
        metrics.sample_negatives(10, seen, 8, seed=0)


def test_perplexity_bpc_and_mcc():
    assert metrics.perplexity(10 * math.log(7.0), 10) == pytest.approx(7.0)
    assert metrics.bits_per_character(100 * math.log(2.0) * 1.5, 100) == pytest.approx(1.5)
    labels, predictions = np.array([1, 1, 1, 0, 0, 0]), np.array([1, 1, 0, 0, 0, 1])
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics.matthews(labels, predictions) == pytest.approx(expected)
    assert metrics.classification(labels, predictions)["accuracy"] == pytest.approx(4 / 6)


def test_confusion_lists_the_planted_mistakes_and_lowest_recalls():
    names = ["a", "b", "c", "d"]
    # a: 4 right; b: 3 right, 2 -> c; c: 1 right, 3 -> a; d: no example
    labels = np.array([0] * 4 + [1] * 5 + [2] * 4)
    predictions = np.array([0] * 4 + [1, 1, 1, 2, 2] + [2, 0, 0, 0])
    out = metrics.confusion(labels, predictions, names, top=2)
    assert out["mistakes"] == [
        {"true": "c", "predicted": "a", "count": 3, "share_of_true": 0.75},
        {"true": "b", "predicted": "c", "count": 2, "share_of_true": 0.4}]
    assert [(r["label"], r["recall"], r["support"]) for r in out["lowest_recall"]] == [
        ("c", 0.25, 4), ("b", 0.6, 5)]
    assert out["examples"] == 13
