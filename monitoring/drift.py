"""The drift check: an Evidently report of calibrated two-sample tests, Bonferroni-corrected.

Why not Evidently's defaults: its chi-square test for categorical columns is a goodness-of-fit test
of the current counts against the reference *proportions*, which ignores the reference's own
sampling noise and raised false alarms ~27% of the time at equal sample sizes (measured), and a
preset tests each column at 0.05, so with 18 columns a check alarms most of the time by chance.
Here every column gets a proper two-sample test (Kolmogorov-Smirnov for numbers, a chi-square
test of the 2 x k contingency table for labels) at alpha / columns, so one check's false-alarm
rate is at most alpha. `benchmarks/drift_power.py` measures both.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from monitoring.features import CATEGORICAL_COLUMNS

CONTINGENCY_TEST = "refit_chi2_contingency"


@dataclass
class ColumnDrift:
    """One column's test."""

    column: str
    method: str
    score: float  # p-value
    threshold: float  # Bonferroni-corrected significance level
    drifted: bool


@dataclass
class DriftResult:
    """The outcome of one check."""

    status: str  # "ok", "drift" or "insufficient_data"
    drifted: bool
    share: float  # share of columns that drifted
    window_size: int
    reference_size: int
    checked_at: str
    columns: list[ColumnDrift] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


MONTE_CARLO_DRAWS = 2000


def contingency_p_value(reference_counts: np.ndarray, current_counts: np.ndarray, seed: int = 0) -> float:
    """p-value of the two-sample chi-square statistic of a 2 x k table of category counts.

    With every expected count at least 5 the chi-square distribution is accurate. Otherwise (many
    labels, small windows) it is not, and alarms too often (7% at alpha 5% with 67 labels and 50
    texts, measured), so the p-value comes from the statistic's exact null distribution, sampled:
    under no drift the current window is a random draw, without replacement, from the pooled rows.
    """
    from scipy.stats import chi2_contingency

    keep = (reference_counts + current_counts) > 0
    table = np.vstack([reference_counts[keep], current_counts[keep]]).astype(np.int64)
    if table.shape[1] < 2:
        return 1.0
    pooled = table.sum(axis=0)
    n_ref, n_cur = int(table[0].sum()), int(table[1].sum())
    expected_cur = pooled * n_cur / (n_ref + n_cur)
    expected_ref = pooled - expected_cur
    if min(expected_cur.min(), expected_ref.min()) >= 5:
        return float(chi2_contingency(table, correction=False).pvalue)

    def statistic(current: np.ndarray) -> np.ndarray:  # (draws, k) -> (draws,)
        reference = pooled - current
        return ((current - expected_cur) ** 2 / expected_cur).sum(axis=-1) + (
            (reference - expected_ref) ** 2 / expected_ref
        ).sum(axis=-1)

    observed = statistic(table[1][None, :])[0]
    rng = np.random.default_rng(seed)
    draws = rng.multivariate_hypergeometric(pooled, n_cur, size=MONTE_CARLO_DRAWS)
    return float((1 + (statistic(draws) >= observed - 1e-9).sum()) / (1 + MONTE_CARLO_DRAWS))


def _chi2_contingency(
    reference: pd.Series, current: pd.Series, _feature_type: Any, threshold: float
) -> tuple[float, bool]:
    """Evidently stat test: two-sample contingency chi-square of the category counts."""
    categories = sorted(set(reference.dropna()) | set(current.dropna()))
    ref_counts = reference.value_counts().reindex(categories, fill_value=0).to_numpy()
    cur_counts = current.value_counts().reindex(categories, fill_value=0).to_numpy()
    p_value = contingency_p_value(ref_counts, cur_counts)
    return p_value, p_value < threshold


@functools.cache
def register_tests() -> None:
    """Register the contingency test with Evidently (once per process)."""
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    test = StatTest(
        name=CONTINGENCY_TEST,
        display_name="chi-square contingency (two-sample) p_value",
        allowed_feature_types=[ColumnType.Categorical],
        default_threshold=0.05,
    )
    register_stattest(test, default_impl=_chi2_contingency)


ACCURACY_COLUMNS = ("estimated_correct", "observed_correct")


def build_report(columns: list[str], alpha: float, accuracy_columns: list[str]) -> Any:
    """The Evidently report: a ValueDrift per column at the Bonferroni level, the drifted share,
    and the mean of each accuracy column (estimated and observed accuracy on the dashboard)."""
    from evidently import Report
    from evidently.metrics import DriftedColumnsCount, MeanValue, ValueDrift

    register_tests()
    threshold = alpha / len(columns)
    metrics: list[Any] = [
        ValueDrift(
            column=c, method=CONTINGENCY_TEST if c in CATEGORICAL_COLUMNS else "ks", threshold=threshold
        )
        for c in columns
    ]
    metrics.append(
        DriftedColumnsCount(
            columns=columns,
            cat_method=CONTINGENCY_TEST,
            num_method="ks",
            cat_threshold=threshold,
            num_threshold=threshold,
            drift_share=1.0 / len(columns),  # one drifted column is an alarm
        )
    )
    metrics += [MeanValue(column=c) for c in accuracy_columns]
    return Report(metrics)


def run_report(reference: pd.DataFrame, current: pd.DataFrame, alpha: float) -> tuple[Any, list[ColumnDrift]]:
    """Run the report (Evidently takes *current* first) and read each column's p-value back.

    Columns named in ACCURACY_COLUMNS are summarised (mean), not tested.
    """
    from evidently import DataDefinition, Dataset

    accuracy = [c for c in ACCURACY_COLUMNS if c in current.columns and current[c].notna().any()]
    columns = [c for c in reference.columns if c not in ACCURACY_COLUMNS]
    numerical = [c for c in columns if c not in CATEGORICAL_COLUMNS] + accuracy
    categorical = [c for c in columns if c in CATEGORICAL_COLUMNS]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    reference = reference.reindex(columns=columns + accuracy)
    # Evidently's dataset summary correlates every column pair; a constant column (a window whose
    # feedback is all correct, say) makes numpy warn on each check. The tests do not use it.
    with np.errstate(invalid="ignore", divide="ignore"):
        snapshot = build_report(columns, alpha, accuracy).run(
            Dataset.from_pandas(current[columns + accuracy], data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    threshold = alpha / len(columns)
    scores = [float(m["value"]) for m in snapshot.dict()["metrics"][: len(columns)]]
    results = [
        ColumnDrift(
            column=c,
            method=CONTINGENCY_TEST if c in CATEGORICAL_COLUMNS else "ks",
            score=score,
            threshold=threshold,
            drifted=bool(score < threshold),
        )
        for c, score in zip(columns, scores, strict=True)
    ]
    return snapshot, results


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    alpha: float = 0.05,
    min_window: int = 100,
) -> tuple[DriftResult, Any]:
    """Compare a window of live features with the reference features.

    Args:
        reference: features of the reference profile (`monitoring.features.build_features`).
        current: features of the window, same columns.
        alpha: family-wise false-alarm rate of the check.
        min_window: below this many rows the result is "insufficient_data" and never drift.

    Returns:
        The typed result and the Evidently snapshot (None when the window was too small).
    """
    start = time.perf_counter()
    now = datetime.now(UTC).isoformat()
    if len(current) < min_window:
        result = DriftResult("insufficient_data", False, 0.0, len(current), len(reference), now)
        return result, None
    snapshot, columns = run_report(reference, current, alpha)
    drifted = [c for c in columns if c.drifted]
    result = DriftResult(
        status="drift" if drifted else "ok",
        drifted=bool(drifted),
        share=len(drifted) / len(columns),
        window_size=len(current),
        reference_size=len(reference),
        checked_at=now,
        columns=columns,
    )
    result.seconds = round(time.perf_counter() - start, 3)
    return result, snapshot
