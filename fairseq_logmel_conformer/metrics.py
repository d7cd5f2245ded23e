"""Clip-level evaluation metrics for audio classifiers, computed over a whole split.

All functions take ``scores`` (N, C) float (logits or probabilities: only the
order within a class or within a clip matters) and ``targets`` (N, C) in {0, 1}
(multi-hot; single-label targets are one-hot). Single-label functions also
accept ``targets`` as (N,) integer class indices.

Classes with no positive clip in the split have no defined AP, and classes
with no positive or no negative clip have no defined AUC: their per-class
value is NaN and they are left out of the macro averages (mAP, mAUC). An
average over no class at all is NaN.
"""
import math
from typing import Dict, Tuple

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import average_precision_score, roc_auc_score


def check_multilabel(scores: np.ndarray, targets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Validate and return ``scores`` (N, C) float64 and ``targets`` (N, C) bool."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (N, C) array, got shape {scores.shape}")
    if targets.shape != scores.shape:
        raise ValueError(f"targets must have the shape of scores {scores.shape}, got {targets.shape}")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError(f"targets must be 0/1, got values {np.unique(targets)[:10].tolist()}")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite, got {int((~np.isfinite(scores)).sum())} non-finite values")
    return scores, targets.astype(bool)


def class_indices(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Single-label ``targets`` as (N,) int class indices, from (N,) indices or (N, C) one-hot rows."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        if not np.issubdtype(targets.dtype, np.integer):
            raise ValueError(f"class-index targets must be integers, got dtype {targets.dtype}")
        if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"class indices must lie in [0, {num_classes}), got [{targets.min()}, {targets.max()}]")
        return targets.astype(np.int64)
    if targets.ndim != 2 or targets.shape[1] != num_classes:
        raise ValueError(f"targets must be (N,) indices or (N, {num_classes}) one-hot, got shape {targets.shape}")
    if not (np.isin(targets, (0, 1)).all() and (targets.sum(axis=1) == 1).all()):
        raise ValueError("one-hot targets must have exactly one 1 per row (use multilabel metrics otherwise)")
    return targets.argmax(axis=1)


def one_hot(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) 0/1 targets from single-label (N,) indices or (N, C) one-hot rows."""
    return np.eye(num_classes, dtype=np.int64)[class_indices(targets, num_classes)]


def per_class_average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(C,) average precision of each class; NaN for classes without a positive clip."""
    scores, targets = check_multilabel(scores, targets)
    result = np.full(scores.shape[1], np.nan)
    for c in np.flatnonzero(targets.any(axis=0)):
        result[c] = average_precision_score(targets[:, c], scores[:, c])
    return result


def per_class_auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(C,) ROC AUC of each class; NaN for classes without both a positive and a negative clip."""
    scores, targets = check_multilabel(scores, targets)
    result = np.full(scores.shape[1], np.nan)
    for c in np.flatnonzero(targets.any(axis=0) & ~targets.all(axis=0)):
        result[c] = roc_auc_score(targets[:, c], scores[:, c])
    return result


def _mean_defined(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN when there are none (without numpy's empty-slice warning)."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro-averaged AP (mAP) over the classes that have at least one positive clip."""
    return _mean_defined(per_class_average_precision(scores, targets))


def mean_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro-averaged ROC AUC (mAUC) over the classes that have positive and negative clips."""
    return _mean_defined(per_class_auc(scores, targets))


def d_prime(auc: float) -> float:
    """Sensitivity index ``sqrt(2) * Phi^-1(auc)``, as reported for AudioSet from the mean AUC.

    0 at chance (AUC 0.5), +inf at AUC 1, NaN for a NaN AUC.
    """
    return float(math.sqrt(2.0) * norm.ppf(auc))


def lwlrap(scores: np.ndarray, targets: np.ndarray) -> float:
    """Label-weighted label-ranking average precision (the FSDKaggle2019 / DCASE2019 task 2 metric).

    For each positive (clip, label) pair, precision = (positive labels of the
    clip scored >= the label) / (labels of the clip scored >= the label); the
    result is the mean over all positive pairs, i.e. each class weighted by its
    number of positives. Ties count against the label (rank = number of labels
    scored >= it), which equals scikit-learn's ``label_ranking_average_precision_score``
    with ``sample_weight`` = positives per clip. Clips without a positive
    label contribute nothing; NaN when the split has no positive label at all.
    """
    scores, targets = check_multilabel(scores, targets)
    if not targets.any():
        return math.nan
    # rankdata(-s, "max")[l] = #{j: s_j >= s_l}; negatives set to +inf drop out of the positive count.
    rank = rankdata(-scores, method="max", axis=1)
    positive_rank = rankdata(np.where(targets, -scores, np.inf), method="max", axis=1)
    precision = positive_rank / rank
    return float(precision[targets].mean())


def top_k_accuracy(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of clips whose true class is among the ``k`` highest scores.

    ``targets`` are (N,) class indices or (N, C) one-hot rows. Equal scores are
    ordered by class index (as ``argmax`` does), so top-1 equals argmax accuracy.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"scores must be a non-empty (N, C) array, got shape {scores.shape}")
    num_clips, num_classes = scores.shape
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must lie in [1, {num_classes}], got {k}")
    labels = class_indices(targets, num_classes)
    if labels.shape[0] != num_clips:
        raise ValueError(f"targets have {labels.shape[0]} clips but scores have {num_clips}")
    true_score = scores[np.arange(num_clips), labels][:, None]
    ahead = (scores > true_score) | ((scores == true_score) & (np.arange(num_classes) < labels[:, None]))
    return float((ahead.sum(axis=1) < k).mean())


def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 (argmax) accuracy; ``targets`` as in :func:`top_k_accuracy`."""
    return top_k_accuracy(scores, targets, 1)


def compute_metrics(scores: np.ndarray, targets: np.ndarray, multilabel: bool) -> Dict[str, float]:
    """All split-level metrics, keyed by names usable as fairseq ``checkpoint.best_checkpoint_metric``.

    Multi-label: ``mAP``, ``mAUC``, ``d_prime``, ``lwlrap`` (``targets`` (N, C) multi-hot).
    Single-label: ``accuracy`` (= ``top1``), ``top1``, ``top5`` (top-min(5, C)), ``mAP``
    (``targets`` (N,) class indices or (N, C) one-hot).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if multilabel:
        scores, targets = check_multilabel(scores, targets)
        auc = mean_auc(scores, targets)
        return {
            "mAP": mean_average_precision(scores, targets),
            "mAUC": auc,
            "d_prime": d_prime(auc),
            "lwlrap": lwlrap(scores, targets),
        }
    if scores.ndim != 2:
        raise ValueError(f"scores must be an (N, C) array, got shape {scores.shape}")
    top1 = accuracy(scores, targets)
    return {
        "accuracy": top1,
        "top1": top1,
        "top5": top_k_accuracy(scores, targets, min(5, scores.shape[1])),
        "mAP": mean_average_precision(scores, one_hot(targets, scores.shape[1])),
    }
