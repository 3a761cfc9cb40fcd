"""The inspection operating point: how sure the model must be before it calls an image normal.

A missed defect (a defective part passed as normal) usually costs far more than a false reject.
With ``normal_label`` and ``max_missed_defect_rate`` set, the normal class's logit is lowered by
the smallest shift that keeps the missed-defect rate on rows the model did not train on at or
under the target, and the shift is folded into the head's bias. Those rows are the validation
split, or under ``selection: cv`` every training row, each predicted by the fold that did not
train on it: a few dozen defective validation images allow no miss at a 2% target, and the shift
then follows the one defect the model is surest is normal. It is a prior shift: every later step
(ONNX export, serving, the monitor's features) reads the shifted model and needs no rule of its
own.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from training.context import StrategyResult, TrainContext
from training.inference import Predictions
from training.model import Classifier

logger = logging.getLogger(__name__)

MARGIN = 1e-4  # past a tie: argmax picks the lowest index, which may be the normal class


@dataclass
class OperatingPoint:
    """The chosen shift and what it did on the rows it was chosen on."""

    normal_label: str
    max_missed_defect_rate: float
    logit_shift: float  # subtracted from the normal class's logit
    rows: int  # held-out rows it was chosen on
    source: str  # "validation", or "out-of-fold" (every training row, by the fold that held it out)
    defective_rows: int
    missed_before: float
    missed_after: float
    accuracy_before: float
    accuracy_after: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the manifest."""
        return asdict(self)


def fit_normal_shift(logits: np.ndarray, y: np.ndarray, normal: int, target: float) -> float:
    """The smallest shift of the normal logit that misses at most ``target`` of the defective rows.

    Args:
        logits: (rows, labels) logits of held-out rows.
        y: their true label indices.
        normal: the normal label's index.
        target: the largest share of defective rows that may be predicted normal.
    """
    defective = y != normal
    if not defective.any():
        return 0.0
    others = np.delete(logits[defective], normal, axis=1).max(axis=1)
    margins = np.sort(logits[defective, normal] - others)[::-1]  # > 0: predicted normal (missed)
    allowed = math.floor(target * len(margins) + 1e-9)
    if allowed >= len(margins) or margins[allowed] < 0:
        return 0.0
    return float(margins[allowed]) + MARGIN


def shift_logits(logits: np.ndarray, normal: int, shift: float) -> np.ndarray:
    """``logits`` with ``shift`` subtracted from the normal column."""
    shifted = logits.copy()
    shifted[:, normal] -= shift
    return shifted


def choose_operating_point(
    logits: np.ndarray,
    y: np.ndarray,
    labels: list[str],
    normal_label: str,
    target: float,
    source: str = "validation",
) -> OperatingPoint:
    """Fit the shift on held-out ``logits`` (or log-probabilities) and say what it does there."""
    normal = labels.index(normal_label)
    shift = fit_normal_shift(logits, y, normal, target)
    defective = y != normal

    def missed_and_accuracy(z: np.ndarray) -> tuple[float, float]:
        predicted = z.argmax(axis=1)
        missed = float((predicted[defective] == normal).mean()) if defective.any() else 0.0
        return missed, float((predicted == y).mean())

    missed_before, accuracy_before = missed_and_accuracy(logits)
    missed_after, accuracy_after = missed_and_accuracy(shift_logits(logits, normal, shift))
    return OperatingPoint(
        normal_label=normal_label,
        max_missed_defect_rate=target,
        logit_shift=shift,
        rows=len(y),
        source=source,
        defective_rows=int(defective.sum()),
        missed_before=missed_before,
        missed_after=missed_after,
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
    )


def fold_normal_shift(model: Classifier, normal: int, shift: float) -> None:
    """Lower the head's bias of the normal class by ``shift`` (logits are calibrated already)."""
    with torch.no_grad():
        model.head.bias[normal] -= shift


def choose_configured_operating_point(
    ctx: TrainContext, held_out: Predictions | None, result: StrategyResult | None = None
) -> OperatingPoint | None:
    """The operating point the config asks for; None when none is asked for.

    Chosen on ``result``'s out-of-fold probabilities when it has them (``selection: cv``), else on
    the selected model's validation predictions ``held_out`` (taken before the head may be
    refitted on those rows).
    """
    target, normal_label = ctx.config.max_missed_defect_rate, ctx.config.normal_label
    if target is None or normal_label is None:
        return None
    out_of_fold = result.out_of_fold if result is not None else None
    if out_of_fold is not None:
        # Log-probabilities: softmax's per-row constant changes no argmax, so a shift found on them
        # is the same shift on the logits of the (calibrated) head fitted on every row.
        log_probabilities = np.log(np.clip(out_of_fold, 1e-12, None))
        return choose_operating_point(
            log_probabilities, ctx.label_ids("train"), ctx.splits.labels, normal_label, target, "out-of-fold"
        )
    if held_out is None:
        logger.warning("max_missed_defect_rate is chosen on validation rows and there are none; not applied")
        return None
    return choose_operating_point(
        held_out.logits, ctx.label_ids("validation"), ctx.splits.labels, normal_label, target
    )


def apply_operating_point(result: StrategyResult, ctx: TrainContext, point: OperatingPoint | None) -> None:
    """Fold the point's shift into the (finalised) model and record it in the result's details."""
    if point is None:
        return
    fold_normal_shift(result.model, ctx.splits.labels.index(point.normal_label), point.logit_shift)
    result.details["operating_point"] = point.to_dict()


def describe_operating_point(point: dict[str, Any]) -> str:
    """One line for people: the shift, the rows it was chosen on, and what it did there."""
    return (
        f"the {point['normal_label']!r} logit lowered by {point['logit_shift']:.3f}, chosen on "
        f"{point['rows']} {point.get('source', 'validation')} rows ({point['defective_rows']} defective): "
        "missed defects "
        f"{point['missed_before']:.4f} -> {point['missed_after']:.4f} (target <= "
        f"{point['max_missed_defect_rate']}), accuracy {point['accuracy_before']:.4f} -> "
        f"{point['accuracy_after']:.4f}"
    )
