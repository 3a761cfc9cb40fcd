"""Classification metrics: accuracy, macro-F1, per-class scores, confusion matrix, calibration."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


@dataclass
class ClassScores:
    """Precision, recall, F1 and support of one label."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class EvaluationResult:
    """Everything measured on one labelled split."""

    accuracy: float
    macro_f1: float
    ece: float  # expected calibration error, 15 equal-width confidence bins
    n: int
    per_class: dict[str, ClassScores] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)  # rows: true, columns: predicted
    labels: list[str] = field(default_factory=list)
    # Inspection: the share of rows of every other label predicted as the no-defect label
    # (None when no ``normal_label`` is configured)
    missed_defect_rate: float | None = None
    normal_label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    if len(y_true) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def missed_defect_rate(y_true: np.ndarray, y_pred: np.ndarray, normal: int) -> float:
    """Share of defective rows (true label not ``normal``) predicted as ``normal``."""
    defective = y_true != normal
    return float((y_pred[defective] == normal).mean()) if defective.any() else 0.0


def evaluate_predictions(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str], normal_label: str | None = None
) -> EvaluationResult:
    """Score predicted probabilities (n, labels) against true label indices (n,).

    Args:
        normal_label: the no-defect label, for the missed-defect rate.
    """
    y_pred = probs.argmax(axis=1)
    k = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=k, zero_division=0
    )
    present = support > 0  # macro-F1 over labels that occur in this split
    per_class = {
        labels[i]: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i in k
    }
    return EvaluationResult(
        accuracy=float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        ece=expected_calibration_error(probs, y_true),
        n=len(y_true),
        per_class=per_class,
        confusion=confusion_matrix(y_true, y_pred, labels=k).tolist(),
        labels=list(labels),
        missed_defect_rate=(
            missed_defect_rate(y_true, y_pred, labels.index(normal_label)) if normal_label in labels else None
        ),
        normal_label=normal_label if normal_label in labels else None,
    )
