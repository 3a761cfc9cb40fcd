"""The promotion gate of a retrain on labels, pure: the numbers a candidate is judged on, and the
verdict.

The gate compares the candidate with production on (1) production's held-out test split and
(2) held-out feedback production never trained on. It promotes only if (2) improves and (1)
drops by no more than the tolerance, and (3) no source's held-out feedback (one API key's labels,
with enough rows to measure) loses more than the per-source tolerance: a candidate that learnt one
source's labels at the cost of the others' is not an improvement. A refit (the approved config
trained again with the gate rows added) ships only if it passes rule (1) too.

An adaptation (trained without labels on a window of live inputs) is judged on the same numbers
and its window's by :func:`monitoring.adaptation_gate.judge_adaptation`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class WindowNumbers:
    """Label-free numbers of production and an adapted candidate on the window it adapted to."""

    rows: int
    # Mean top probability: both models are temperature-scaled on held-out labelled rows, so this
    # is each one's own estimate of its accuracy on the window.
    production_confidence: float
    candidate_confidence: float
    # Total variation distance between the predicted-label mix on the window and the training
    # label mix: a model collapsing onto a few labels moves far from it.
    production_mix_distance: float
    candidate_mix_distance: float
    max_mix_growth: float  # the largest growth of that distance allowed
    max_confidence_fall: float  # the largest fall of the estimated accuracy allowed
    # Labels the candidate (almost) stops answering that production still answers: a collapse of
    # the rare labels (the defects), too small a share of the window to move the distance much.
    vanished: list[str] = field(default_factory=list)
    # Production's confident answers on the window (top probability >= adaptation_gate.CONFIDENT),
    # how many of them the candidate answers otherwise, and how many production is expected to get
    # wrong (the sum of one minus its confidence over them).
    confident: int = 0
    overturned: int = 0
    expected_wrong: float = 0.0
    # Window inputs the candidate reads rewritten (a `spelling` corrector's words): left out of
    # the three above, since production read other words there (ones it could not read), and
    # changing those answers is what the adaptation is for.
    rewritten: int = 0
    # Mean top probability minus accuracy on production's test split (labelled rows neither
    # version trained on): how far each one's confidence overstates its accuracy. Temperature
    # scaling on a few validation rows leaves each a few points off, its own way.
    production_overconfidence: float = 0.0
    candidate_overconfidence: float = 0.0


@dataclass
class GateNumbers:
    """Everything a retrain measured; ``retrain_runs.numbers`` stores it (``to_json``)."""

    production_test_accuracy: float
    candidate_test_accuracy: float
    production_feedback_accuracy: float  # NaN without gate rows
    candidate_feedback_accuracy: float
    feedback_train_rows: int
    feedback_gate_rows: int
    tolerance: float  # the largest test-accuracy drop allowed
    feedback_test_rows: int = 0  # feedback on test-split texts: trained on by neither candidate nor refit
    held_back_labels: dict[str, int] = field(default_factory=dict)
    # Source -> {"rows", "production", "candidate"}: the gate rows of each source and both accuracies.
    per_source: dict[str, dict[str, float]] = field(default_factory=dict)
    source_tolerance: float = 0.05  # the largest accuracy drop allowed on one source's gate rows
    source_min_rows: int = 20  # sources with fewer gate rows are not judged alone
    quarantined: dict[str, int] = field(default_factory=dict)  # why -> feedback rows quarantined
    capped: dict[str, int] = field(default_factory=dict)  # source -> rows over its share, not used
    refit_version: str | None = None
    refit_test_accuracy: float | None = None
    refit_error: str | None = None
    shipped_version: str | None = None
    train_seconds: float | None = None
    window: WindowNumbers | None = None  # an adaptation's label-free numbers
    adaptation: str | None = None  # the adaptation strategy, when the candidate is one
    # An adaptation's test rows production answered right and it wrong (lost), and the reverse
    test_changes: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """The numbers as JSON values: NaN becomes null, optional fields left unset are left out."""
        optional = {
            "refit_version", "refit_test_accuracy", "refit_error", "shipped_version", "train_seconds",
            "window", "adaptation", "test_changes",
        }  # fmt: skip
        values = {k: v for k, v in asdict(self).items() if k not in optional or v is not None}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on a candidate: promoted or rejected, why, and the numbers behind it."""

    promoted: bool
    reason: str
    numbers: GateNumbers

    @property
    def outcome(self) -> str:
        """``"promoted"`` or ``"rejected"``, as the audit table and the metrics name it."""
        return "promoted" if self.promoted else "rejected"


def judge_candidate(numbers: GateNumbers) -> GateDecision:
    """Promote when feedback accuracy improves and test accuracy drops at most the tolerance."""
    gain = numbers.candidate_feedback_accuracy - numbers.production_feedback_accuracy
    drop = numbers.production_test_accuracy - numbers.candidate_test_accuracy
    if math.isnan(gain):
        return GateDecision(False, "no held-out feedback to compare on", numbers)
    if gain <= 0:
        return GateDecision(False, f"feedback accuracy did not improve ({gain:+.4f})", numbers)
    if drop > numbers.tolerance:
        return GateDecision(
            False, f"test accuracy dropped {drop:.4f} (> tolerance {numbers.tolerance})", numbers
        )
    for source, row in sorted(numbers.per_source.items()):
        source_drop = row["production"] - row["candidate"]
        if row["rows"] >= numbers.source_min_rows and source_drop > numbers.source_tolerance:
            return GateDecision(
                False,
                f"feedback accuracy of source {source} dropped {source_drop:.4f} on {int(row['rows'])} "
                f"rows (> {numbers.source_tolerance})",
                numbers,
            )
    change = numbers.candidate_test_accuracy - numbers.production_test_accuracy  # not -drop: no "-0.0000"
    return GateDecision(
        True,
        f"feedback accuracy {gain:+.4f} on {numbers.feedback_gate_rows} held-out rows, "
        f"test accuracy change {change:+.4f}",
        numbers,
    )


def refit_passes(numbers: GateNumbers) -> bool:
    """Whether the measured refit keeps test accuracy within the tolerance of production's."""
    if numbers.refit_test_accuracy is None:
        return False
    return numbers.production_test_accuracy - numbers.refit_test_accuracy <= numbers.tolerance
