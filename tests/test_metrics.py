"""Split-level metrics against scikit-learn and hand-computed values."""
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score, roc_auc_score

from fairseq_logmel_conformer.metrics import (
    accuracy,
    compute_metrics,
    d_prime,
    lwlrap,
    mean_auc,
    mean_average_precision,
    per_class_auc,
    per_class_average_precision,
    top_k_accuracy,
)

NO_POSITIVES, NO_NEGATIVES = 2, 4


@pytest.fixture
def multilabel_split():
    """(40, 6) noisy scores and multi-hot targets; class 2 has no positive clip, class 4 no negative clip."""
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 6)) < 0.3).astype(np.int64)
    targets[:, NO_POSITIVES] = 0
    targets[:, NO_NEGATIVES] = 1
    scores = targets + rng.normal(scale=0.8, size=targets.shape)
    return scores, targets


def test_average_precision_matches_sklearn(multilabel_split):
    scores, targets = multilabel_split
    ap = per_class_average_precision(scores, targets)
    assert np.isnan(ap[NO_POSITIVES])
    valid = [c for c in range(6) if c != NO_POSITIVES]
    expected = [average_precision_score(targets[:, c], scores[:, c]) for c in valid]
    np.testing.assert_allclose(ap[valid], expected)
    assert mean_average_precision(scores, targets) == pytest.approx(np.mean(expected))
    assert 0.0 < np.mean(expected) < 1.0


def test_auc_matches_sklearn(multilabel_split):
    scores, targets = multilabel_split
    auc = per_class_auc(scores, targets)
    assert np.isnan(auc[NO_POSITIVES]) and np.isnan(auc[NO_NEGATIVES])
    valid = [0, 1, 3, 5]
    expected = roc_auc_score(targets[:, valid], scores[:, valid], average=None)
    np.testing.assert_allclose(auc[valid], expected)
    assert mean_auc(scores, targets) == pytest.approx(expected.mean())


def test_undefined_average_is_nan():
    assert math.isnan(mean_average_precision(np.ones((3, 2)), np.zeros((3, 2))))


def test_lwlrap_matches_sklearn_label_ranking_ap(multilabel_split):
    scores, targets = multilabel_split
    expected = label_ranking_average_precision_score(targets, scores, sample_weight=targets.sum(axis=1))
    assert lwlrap(scores, targets) == pytest.approx(expected)
    # Quantised scores create ties; sklearn counts them against the label as lwlrap does.
    coarse = np.round(scores)
    expected = label_ranking_average_precision_score(targets, coarse, sample_weight=targets.sum(axis=1))
    assert lwlrap(coarse, targets) == pytest.approx(expected)


def test_lwlrap_hand_computed():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.6], [0.3, 0.2, 0.1]])
    targets = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 0]])
    # Positive pairs: (0,0) 1/1, (0,2) 2/3, (1,2) 1/2; the clip without labels adds nothing.
    assert lwlrap(scores, targets) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert lwlrap(np.array([[0.5, 0.5, 0.1]]), np.array([[0, 1, 0]])) == pytest.approx(0.5)


def test_d_prime():
    assert d_prime(0.5) == 0.0
    assert d_prime(norm.cdf(1 / math.sqrt(2))) == pytest.approx(1.0)


def test_top_k_accuracy_hand_computed():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]])
    labels = np.array([2, 0, 1])
    # Clip 2's true class ties with class 0, which comes first (argmax order), so it ranks third.
    assert accuracy(scores, labels) == pytest.approx(1 / 3)
    assert top_k_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(scores, labels, 3) == 1.0
    assert top_k_accuracy(scores, np.eye(3, dtype=int)[labels], 2) == pytest.approx(2 / 3)
    assert accuracy(scores, labels) == np.mean(scores.argmax(axis=1) == labels)


def test_compute_metrics_keys_and_values(multilabel_split):
    scores, targets = multilabel_split
    multi = compute_metrics(scores, targets, multilabel=True)
    assert set(multi) == {"mAP", "mAUC", "d_prime", "lwlrap"}
    assert all(type(v) is float for v in multi.values())
    assert multi["d_prime"] == pytest.approx(math.sqrt(2) * norm.ppf(multi["mAUC"]))

    labels = np.array([0, 1, 2, 2])
    single_scores = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    single = compute_metrics(single_scores, labels, multilabel=False)
    assert set(single) == {"accuracy", "top1", "top5", "mAP"}
    assert single["accuracy"] == single["top1"] == 0.75
    assert single["top5"] == 1.0  # k = min(5, C) = 3
    assert single == compute_metrics(single_scores, np.eye(3)[labels], multilabel=False)
    assert all(type(v) is float for v in single.values())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: compute_metrics(np.zeros((4, 3)), np.zeros((4, 2)), True), r"\(4, 2\)"),
        (lambda: compute_metrics(np.zeros(4), np.zeros(4), True), r"\(4,\)"),
        (lambda: compute_metrics(np.zeros((2, 2)), np.array([[0, 2], [1, 0]]), True), "0/1"),
        (lambda: compute_metrics(np.zeros((2, 2)), np.array([[1, 1], [1, 0]]), False), "exactly one"),
        (lambda: accuracy(np.zeros((2, 3)), np.array([0, 3])), r"\[0, 3\)"),
        (lambda: top_k_accuracy(np.zeros((2, 3)), np.array([0, 1]), 4), "k must"),
        (lambda: lwlrap(np.full((1, 2), np.nan), np.ones((1, 2))), "finite"),
    ],
)
def test_invalid_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()
