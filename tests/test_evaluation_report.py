"""write_report: files exist and hold the values of compute_metrics and the per-class metrics."""
import csv
import json
import math

import numpy as np
import pytest

from fairseq_logmel_conformer.evaluation_report import write_report
from fairseq_logmel_conformer.metrics import compute_metrics, per_class_auc, per_class_average_precision

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE


@pytest.mark.parametrize("num_classes", [5, 60])
def test_multilabel_report(tmp_path, num_classes):
    rng = np.random.default_rng(1)
    targets = (rng.random((30, num_classes)) < 0.3).astype(np.int64)
    targets[:, 1] = 0  # no positives: AP and AUC undefined
    scores = targets + rng.normal(size=targets.shape)
    names = [f"/m/{c:03d}" for c in range(num_classes)]
    display = [f"Sound {c}" for c in range(num_classes)]

    returned = write_report(str(tmp_path), scores, targets, names, multilabel=True, display_names=display)

    expected = compute_metrics(scores, targets, multilabel=True)
    assert returned == expected
    summary = _read_json(tmp_path / "metrics.json")
    assert summary["num_clips"] == 30 and summary["num_classes"] == num_classes and summary["multilabel"] is True
    assert summary["metrics"] == pytest.approx(expected)

    rows = _read_csv(tmp_path / "per_class.csv")
    assert [r["class"] for r in rows] == names and [r["display_name"] for r in rows] == display
    assert [int(r["support"]) for r in rows] == targets.sum(axis=0).tolist()
    np.testing.assert_allclose([float(r["AP"]) for r in rows], per_class_average_precision(scores, targets), atol=1e-6)
    np.testing.assert_allclose([float(r["AUC"]) for r in rows], per_class_auc(scores, targets), atol=1e-6)
    assert math.isnan(float(rows[1]["AP"]))
    _assert_png(tmp_path / "per_class_ap.png")


def test_single_label_report(tmp_path):
    labels = np.array([0, 0, 1, 1, 2, 2])
    # Predictions (argmax): 0, 1, 1, 1, 1, 0 -> class 2 is never predicted.
    scores = np.eye(3)[[0, 1, 1, 1, 1, 0]] + 0.01

    returned = write_report(str(tmp_path), scores, labels, ["dog", "rain", "siren"], multilabel=False)

    assert returned == compute_metrics(scores, labels, multilabel=False)
    summary = _read_json(tmp_path / "metrics.json")
    assert summary["metrics"]["accuracy"] == pytest.approx(0.5)
    assert summary["num_clips"] == 6 and summary["num_classes"] == 3 and summary["multilabel"] is False

    rows = _read_csv(tmp_path / "per_class.csv")
    assert [r["display_name"] for r in rows] == ["dog", "rain", "siren"]
    assert [int(r["support"]) for r in rows] == [2, 2, 2]
    np.testing.assert_allclose([float(r["recall"]) for r in rows], [0.5, 1.0, 0.0])
    np.testing.assert_allclose([float(r["precision"]) for r in rows], [0.5, 0.5, np.nan])
    _assert_png(tmp_path / "confusion_matrix.png")


def test_undefined_metrics_are_json_null(tmp_path):
    # No class has a negative clip, so mAUC and d_prime are undefined.
    write_report(str(tmp_path), np.ones((2, 2)), np.ones((2, 2)), ["a", "b"], multilabel=True)
    assert _read_json(tmp_path / "metrics.json")["metrics"]["mAUC"] is None


def test_class_name_count_must_match(tmp_path):
    with pytest.raises(ValueError, match="3 classes but got 2 class names"):
        write_report(str(tmp_path), np.zeros((2, 3)), np.zeros((2, 3)), ["a", "b"], multilabel=True)
