"""The drift check: calibrated two-sample tests of every feature at a Bonferroni level.

Why not Evidently's defaults: its chi-square test for categorical columns is a goodness-of-fit test
of the current counts against the reference *proportions*, which ignores the reference's own
sampling noise and raised false alarms ~27% of the time at equal sample sizes (measured), and a
preset tests each column at 0.05, so with 18 columns a check alarms most of the time by chance.
Here every column gets a proper two-sample test (Kolmogorov-Smirnov for numbers, a chi-square
test of the 2 x k contingency table for labels, and for novelty, each input's distance to the
nearest reference input, a one-sided test of how many inputs lie beyond the reference's own 99th
percentile). The family-wise rate alpha is split in halves, one for the class-probability columns
and one for the others (prediction summary, embedding axes, input descriptors, novelty), each
half divided among its columns, so one check's false-alarm rate is at most alpha and 77 class
probabilities do not drown the power of the other 19 features; within the second half novelty
takes a half of its own (``NOVELTY_SHARE``).
`benchmarks/drift_power.py` measures both.

The tests run here, not inside an Evidently report: Evidently's ValueDrift renders a plotly widget
in its calculation whether or not a report is shown, which made a 1,000-row check take about a
second where the tests take hundredths. The Evidently snapshot that the workspace's dashboards
read is built from a check when it is recorded (`build_snapshot`), with these same tests
registered as Evidently stat tests.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from monitoring.features import CATEGORICAL_COLUMNS, NOVELTY_COLUMN, is_probability_column, novelty_threshold

CONTINGENCY_TEST = "refit_chi2_contingency"
KS_TEST = "refit_ks"
NOVELTY_TEST = "refit_novelty_excess"
ACCURACY_COLUMNS = ("estimated_correct", "observed_correct")  # summarised, not tested


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


MONTE_CARLO_DRAWS = 2000  # at least; more where the level needs them (MONTE_CARLO_RESOLUTION)
MONTE_CARLO_RESOLUTION = 2  # the smallest p-value the draws can give is half the level
MONTE_CARLO_BATCH = 250
MONTE_CARLO_STOP = 10  # exceedances that end the sampling early (Besag and Clifford, 1991)
# Novelty's share of the non-probability half of alpha. Its test counts inputs beyond the far tail,
# a discrete statistic whose real false-alarm rate sits far below its level: on BANKING77 windows
# of 50, 200 and 1,000 texts, 1 of 4,600 undrifted windows reached 0.0125 (measured). An even
# share (1/19 of the half) left most of what it was given unspent, while the first texts of a new
# kind of input, which novelty sees before any other feature, were missed more often
# (`benchmarks/drift_power.py`; the share was chosen on another draw of held-out intents than the
# one it reports).
NOVELTY_SHARE = 0.5


def contingency_p_value(
    reference_counts: np.ndarray, current_counts: np.ndarray, seed: int = 0, level: float | None = None
) -> float:
    """p-value of the two-sample chi-square statistic of a 2 x k table of category counts.

    With every expected count at least 5 the chi-square distribution is accurate. Otherwise (many
    labels, small windows) it is not, and alarms too often (7% at alpha 5% with 67 labels and 50
    texts, measured), so the p-value comes from the statistic's exact null distribution, sampled:
    under no drift the current window is a random draw, without replacement, from the pooled rows.
    The sampling stops once ``MONTE_CARLO_STOP`` draws reach the observed statistic, with the
    p-value stop / draws, which is as valid as the full sample's (Besag and Clifford's sequential
    Monte Carlo test): a window like the reference is settled in a few hundred draws. With the
    ``level`` the p-value is compared to, there are enough draws to go below it: n draws cannot
    give less than 1 / (n + 1), and a column's Bonferroni level can be smaller than that.
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
    draws = MONTE_CARLO_DRAWS
    if level:
        draws = max(draws, math.ceil(MONTE_CARLO_RESOLUTION / level))
    reached, drawn = 0, 0
    while drawn < draws:
        size = min(MONTE_CARLO_BATCH, draws - drawn)
        hits = statistic(rng.multivariate_hypergeometric(pooled, n_cur, size=size)) >= observed - 1e-9
        so_far = reached + np.cumsum(hits)
        if so_far[-1] >= MONTE_CARLO_STOP:
            return MONTE_CARLO_STOP / (drawn + int(np.argmax(so_far >= MONTE_CARLO_STOP)) + 1)
        reached, drawn = int(so_far[-1]), drawn + size
    return (1 + reached) / (1 + draws)


def ks_p_values(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Two-sided two-sample Kolmogorov-Smirnov p-value of each column of two (rows, columns) arrays.

    NaNs are left out column by column. The p-value is Stephens' approximation to the statistic's
    distribution at the effective sample size n m / (n + m), which is within 3% of scipy's
    ``kstwo`` from 50 effective rows down to p = 1e-4 (measured) at a thousandth of its cost: a
    check tests a column per class, and ``kstwo`` took 10-60 ms for 84 columns.
    """
    from scipy.stats import kstwobign

    # Sorted columns, contiguous each; NaNs sort last.
    ref = np.sort(np.asfortranarray(reference, dtype=np.float64), axis=0)
    cur = np.sort(np.asfortranarray(current, dtype=np.float64), axis=0)
    ref_rows, cur_rows = (~np.isnan(ref)).sum(axis=0), (~np.isnan(cur)).sum(axis=0)
    statistics = np.zeros(ref.shape[1])
    for j in range(ref.shape[1]):
        if not ref_rows[j] or not cur_rows[j]:
            continue  # nothing to compare: statistic 0, p-value 1
        r, c = ref[: ref_rows[j], j], cur[: cur_rows[j], j]
        pooled = np.concatenate([r, c])
        gaps = np.searchsorted(r, pooled, side="right") / len(r)
        gaps -= np.searchsorted(c, pooled, side="right") / len(c)
        statistics[j] = np.abs(gaps).max()
    effective = np.sqrt(np.maximum(ref_rows * cur_rows / np.maximum(ref_rows + cur_rows, 1), 1.0))
    return np.clip(kstwobign.sf((effective + 0.12 + 0.11 / effective) * statistics), 0.0, 1.0)


def novelty_p_value(reference: np.ndarray, current: np.ndarray) -> float:
    """One-sided p-value that more of ``current`` than of ``reference`` lies beyond the reference's
    99th percentile (of nearest-reference distances): Fisher's exact test of the 2 x 2 table.

    Inputs of a kind the reference never held are a minority of a window at first (a new intent
    is 10% of the tickets): a shift of the whole distribution, which Kolmogorov-Smirnov looks for,
    is small, while the excess beyond the far tail is large (on BANKING77 with 10% of a 1,000-text
    window from unseen intents, the check flagged 0.94 of windows with it, 0.28 without). The
    reference's count stands in the table, not an assumed 1%, so a small reference whose
    percentile is itself uncertain does not turn into false alarms. NaNs are left out.
    """
    from scipy.stats import fisher_exact

    ref, cur = reference[~np.isnan(reference)], current[~np.isnan(current)]
    if not len(ref) or not len(cur):
        return 1.0
    threshold = novelty_threshold(ref)
    ref_beyond, cur_beyond = int((ref > threshold).sum()), int((cur > threshold).sum())
    table = [[cur_beyond, len(cur) - cur_beyond], [ref_beyond, len(ref) - ref_beyond]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def column_method(column: str) -> str:
    """The name of the test a feature column gets (each registered with Evidently)."""
    if column in CATEGORICAL_COLUMNS:
        return CONTINGENCY_TEST
    return NOVELTY_TEST if column == NOVELTY_COLUMN else KS_TEST


def column_levels(columns: list[str], alpha: float) -> dict[str, float]:
    """Each column's significance level: ``alpha`` split evenly between the class-probability
    columns and the others, each share divided among its columns, except that novelty takes
    ``NOVELTY_SHARE`` of the others' share (weighted Bonferroni: the levels sum to ``alpha``)."""
    probabilities = [c for c in columns if is_probability_column(c)]
    others = [c for c in columns if not is_probability_column(c)]
    share = alpha / max(1, bool(others) + bool(probabilities))  # each family present takes an equal share
    levels = {c: share / len(probabilities) for c in probabilities}
    rest = [c for c in others if c != NOVELTY_COLUMN]
    if NOVELTY_COLUMN in others:
        levels[NOVELTY_COLUMN] = share * NOVELTY_SHARE if rest else share
        share -= levels[NOVELTY_COLUMN]
    levels.update({c: share / len(rest) for c in rest})
    return levels


def category_counts(reference: pd.Series, current: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Counts of every category seen on either side, in the same order."""
    ref_counts, cur_counts = reference.value_counts(), current.value_counts()
    categories = ref_counts.index.union(cur_counts.index)
    return (
        ref_counts.reindex(categories, fill_value=0).to_numpy(),
        cur_counts.reindex(categories, fill_value=0).to_numpy(),
    )


def score_columns(reference: pd.DataFrame, current: pd.DataFrame, alpha: float) -> list[ColumnDrift]:
    """Every feature's test at its level; columns named in ACCURACY_COLUMNS are not tested."""
    columns = [c for c in reference.columns if c not in ACCURACY_COLUMNS]
    levels = column_levels(columns, alpha)
    numerical = [c for c in columns if column_method(c) == KS_TEST]
    scores = dict(
        zip(
            numerical,
            ks_p_values(reference[numerical].to_numpy(np.float64), current[numerical].to_numpy(np.float64)),
            strict=True,
        )
    )
    for column in columns:
        if column in CATEGORICAL_COLUMNS:
            counts = category_counts(reference[column], current[column])
            scores[column] = contingency_p_value(*counts, level=levels[column])
        elif column == NOVELTY_COLUMN:
            scores[column] = novelty_p_value(
                reference[column].to_numpy(np.float64), current[column].to_numpy(np.float64)
            )
    return [
        ColumnDrift(
            column=c,
            method=column_method(c),
            score=float(scores[c]),
            threshold=levels[c],
            drifted=bool(scores[c] < levels[c]),
        )
        for c in columns
    ]


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    alpha: float = 0.05,
    min_window: int = 100,
) -> DriftResult:
    """Compare a window of live features with the reference features.

    Args:
        reference: features of the reference profile (`monitoring.features.build_features`).
        current: features of the window, same columns.
        alpha: family-wise false-alarm rate of the check.
        min_window: below this many rows the result is "insufficient_data" and never drift.

    Returns:
        The result, each column's test in it.
    """
    start = time.perf_counter()
    now = datetime.now(UTC).isoformat()
    if len(current) < min_window:
        return DriftResult("insufficient_data", False, 0.0, len(current), len(reference), now)
    columns = score_columns(reference, current, alpha)
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
    return result


def _ks_stattest(
    reference: pd.Series, current: pd.Series, _feature_type: Any, threshold: float
) -> tuple[float, bool]:
    """Evidently stat test: the check's Kolmogorov-Smirnov test of one column."""
    p_value = float(
        ks_p_values(reference.to_numpy(np.float64)[:, None], current.to_numpy(np.float64)[:, None])[0]
    )
    return p_value, p_value < threshold


def _novelty_stattest(
    reference: pd.Series, current: pd.Series, _feature_type: Any, threshold: float
) -> tuple[float, bool]:
    """Evidently stat test: the excess of inputs beyond the reference's far tail of novelty."""
    p_value = novelty_p_value(reference.to_numpy(np.float64), current.to_numpy(np.float64))
    return p_value, p_value < threshold


def _contingency_stattest(
    reference: pd.Series, current: pd.Series, _feature_type: Any, threshold: float
) -> tuple[float, bool]:
    """Evidently stat test: two-sample contingency chi-square of the category counts."""
    p_value = contingency_p_value(*category_counts(reference, current), level=threshold)
    return p_value, p_value < threshold


@functools.cache
def register_tests() -> None:
    """Register the check's tests with Evidently (once per process)."""
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    for name, display, kind, implementation in (
        (
            CONTINGENCY_TEST,
            "chi-square contingency (two-sample)",
            ColumnType.Categorical,
            _contingency_stattest,
        ),
        (KS_TEST, "Kolmogorov-Smirnov (two-sample, asymptotic)", ColumnType.Numerical, _ks_stattest),
        (
            NOVELTY_TEST,
            "excess beyond the reference's 99th percentile (Fisher, one-sided)",
            ColumnType.Numerical,
            _novelty_stattest,
        ),
    ):
        test = StatTest(
            name=name,
            display_name=f"{display} p_value",
            allowed_feature_types=[kind],
            default_threshold=0.05,
        )
        register_stattest(test, default_impl=implementation)


def build_snapshot(reference: pd.DataFrame, current: pd.DataFrame, result: DriftResult) -> Any:
    """The check as an Evidently snapshot, for the workspace's dashboards and Evidently's HTML.

    A ValueDrift per tested column at the check's level, except the class probabilities (Refit's
    report and metrics show those; in Evidently each costs a rendered widget), the drifted share
    of those columns, and the mean of each accuracy column (estimated and observed accuracy).
    Evidently takes *current* first.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, MeanValue, ValueDrift

    register_tests()
    tested = [c for c in result.columns if not is_probability_column(c.column)]
    columns = [c.column for c in tested]
    accuracy = [c for c in ACCURACY_COLUMNS if c in current.columns and current[c].notna().any()]
    metrics: list[Any] = [
        ValueDrift(column=c.column, method=column_method(c.column), threshold=c.threshold) for c in tested
    ]
    level = tested[0].threshold if tested else 0.05  # one level for every column outside the probabilities
    metrics.append(
        DriftedColumnsCount(
            columns=columns,
            cat_method=CONTINGENCY_TEST,
            num_method=KS_TEST,
            per_column_method={c: NOVELTY_TEST for c in columns if c == NOVELTY_COLUMN},
            cat_threshold=level,
            num_threshold=level,
            drift_share=1.0 / max(1, len(columns)),  # one drifted column is an alarm
        )
    )
    metrics += [MeanValue(column=c) for c in accuracy]
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c not in CATEGORICAL_COLUMNS] + accuracy,
        categorical_columns=[c for c in columns if c in CATEGORICAL_COLUMNS],
    )
    # Evidently's dataset summary correlates every column pair; a constant column (a window whose
    # feedback is all correct, say) makes numpy warn on each check. The tests do not use it.
    with np.errstate(invalid="ignore", divide="ignore"):
        return Report(metrics).run(
            Dataset.from_pandas(current[columns + accuracy], data_definition=definition),
            Dataset.from_pandas(reference.reindex(columns=columns + accuracy), data_definition=definition),
        )
