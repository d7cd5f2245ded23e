"""Evaluation report of a classifier on one split: metrics.json, per_class.csv and a PNG figure."""
import csv
import json
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from fairseq_logmel_conformer.metrics import (
    check_multilabel,
    class_indices,
    compute_metrics,
    per_class_auc,
    per_class_average_precision,
)

# Past these many classes, names no longer fit on a readable figure.
MAX_NAMED_AP_BARS = 50
MAX_NAMED_CONFUSION_CLASSES = 60


def _json_value(value: float) -> Optional[float]:
    """NaN/inf as JSON null (strict JSON has no such numbers)."""
    return value if math.isfinite(value) else None


def _save(figure: Figure, path: str) -> None:
    """Render with Agg directly, leaving pyplot's global backend untouched."""
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _plot_average_precision(ap: np.ndarray, names: Sequence[str], mean_ap: float, path: str) -> None:
    """Horizontal bars of per-class AP, best first; only the best and worst classes by name when C is large."""
    defined = np.flatnonzero(~np.isnan(ap))
    order = defined[np.argsort(-ap[defined], kind="stable")]
    title = f"Per-class AP, mAP {mean_ap:.3f}"
    half = MAX_NAMED_AP_BARS // 2
    truncated = len(order) > MAX_NAMED_AP_BARS
    if truncated:
        order = np.concatenate([order[:half], order[-half:]])
        title += f"\n{half} best and {half} worst of {len(defined)} classes"
    if len(defined) < len(ap):
        title += f"\nomitted (no positive clip): {len(ap) - len(defined)} classes"
    figure = Figure(figsize=(8, max(3.0, 0.22 * len(order) + 1.5)))
    axes = figure.add_subplot()
    axes.barh(np.arange(len(order)), ap[order])
    axes.set_yticks(np.arange(len(order)), [names[c] for c in order], fontsize=7)
    if truncated:
        axes.axhline(half - 0.5, color="black", linestyle="--", linewidth=0.8)
    axes.invert_yaxis()
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("average precision")
    axes.set_title(title, fontsize=9)
    _save(figure, path)


def _plot_confusion(matrix: np.ndarray, names: Sequence[str], accuracy: float, path: str) -> None:
    """Row-normalised (C, C) confusion matrix; class names on the axes when C is small enough."""
    num_classes = matrix.shape[0]
    side = min(16.0, max(4.0, 0.2 * num_classes + 2.5))
    figure = Figure(figsize=(side + 1.0, side))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, label="fraction of true class")
    if num_classes <= MAX_NAMED_CONFUSION_CLASSES:
        ticks = np.arange(num_classes)
        axes.set_xticks(ticks, names, rotation=90, fontsize=7)
        axes.set_yticks(ticks, names, fontsize=7)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"Confusion matrix (row-normalised), accuracy {accuracy:.3f}", fontsize=9)
    _save(figure, path)


def _write_csv(path: str, header: List[str], rows: List[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_report(
    out_dir: str,
    scores: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    multilabel: bool,
    display_names: Optional[Sequence[str]] = None,
    source: Optional[Dict[str, str]] = None,
) -> Dict[str, float]:
    """Write metrics.json, per_class.csv and a figure to ``out_dir``; return :func:`compute_metrics`'s dict.

    Args:
        scores: (N, C) float scores of N clips.
        targets: (N, C) 0/1 multi-hot (multi-label), or (N,) class indices / (N, C) one-hot (single-label).
        class_names: C label names in class order (labels.txt column 1).
        display_names: C human-readable names (labels.txt column 2); defaults to ``class_names``.
        source: what was evaluated (e.g. checkpoint and split), written first into metrics.json.

    per_class.csv columns: multi-label ``class, display_name, support, AP, AUC``
    (support = positive clips); single-label ``class, display_name, support,
    recall, precision`` (recall = per-class accuracy, from argmax predictions).
    Undefined values are written as ``nan`` in the CSV and ``null`` in the JSON.
    The figure is per_class_ap.png (multi-label) or confusion_matrix.png (single-label).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be an (N, C) array, got shape {scores.shape}")
    num_clips, num_classes = scores.shape
    display_names = list(class_names if display_names is None else display_names)
    if len(class_names) != num_classes or len(display_names) != num_classes:
        raise ValueError(
            f"scores have {num_classes} classes but got {len(class_names)} class names "
            f"and {len(display_names)} display names"
        )
    metrics = compute_metrics(scores, targets, multilabel)
    os.makedirs(out_dir, exist_ok=True)
    summary = {
        **(source or {}),
        "num_clips": num_clips,
        "num_classes": num_classes,
        "multilabel": multilabel,
        "metrics": {name: _json_value(value) for name, value in metrics.items()},
    }
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, allow_nan=False)

    if multilabel:
        scores, targets = check_multilabel(scores, targets)
        ap = per_class_average_precision(scores, targets)
        auc = per_class_auc(scores, targets)
        support = targets.sum(axis=0)
        header = ["class", "display_name", "support", "AP", "AUC"]
        columns = (ap, auc)
        _plot_average_precision(ap, display_names, metrics["mAP"], os.path.join(out_dir, "per_class_ap.png"))
    else:
        labels = class_indices(targets, num_classes)
        counts = confusion_matrix(labels, scores.argmax(axis=1), labels=np.arange(num_classes))
        support = counts.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.diag(counts) / support
            precision = np.diag(counts) / counts.sum(axis=0)
            normalised = counts / np.maximum(support, 1)[:, None]
        header = ["class", "display_name", "support", "recall", "precision"]
        columns = (recall, precision)
        _plot_confusion(normalised, display_names, metrics["accuracy"], os.path.join(out_dir, "confusion_matrix.png"))

    rows = [
        [class_names[c], display_names[c], int(support[c])] + [f"{float(column[c]):.6f}" for column in columns]
        for c in range(num_classes)
    ]
    _write_csv(os.path.join(out_dir, "per_class.csv"), header, rows)
    return metrics
