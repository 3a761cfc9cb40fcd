"""The promotion gate, pure: the numbers a candidate is judged on, and the verdict.

The gate compares the candidate with production on (1) production's held-out test split and
(2) held-out feedback production never trained on. It promotes only if (2) improves and (1)
drops by no more than the tolerance, and (3) no source's held-out feedback (one API key's labels,
with enough rows to measure) loses more than the per-source tolerance: a candidate that learnt one
source's labels at the cost of the others' is not an improvement. A refit (the approved config
trained again with the gate rows added) ships only if it passes rule (1) too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


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

    def to_json(self) -> dict[str, Any]:
        """The numbers as JSON values: NaN becomes null, optional fields left unset are left out."""
        optional = {"refit_version", "refit_test_accuracy", "refit_error", "shipped_version", "train_seconds"}
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
    return GateDecision(True, f"feedback accuracy {gain:+.4f}, test accuracy change {-drop:+.4f}", numbers)


def refit_passes(numbers: GateNumbers) -> bool:
    """Whether the measured refit keeps test accuracy within the tolerance of production's."""
    if numbers.refit_test_accuracy is None:
        return False
    return numbers.production_test_accuracy - numbers.refit_test_accuracy <= numbers.tolerance
