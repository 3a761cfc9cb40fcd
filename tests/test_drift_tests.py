"""The drift check's tests: their p-values, their levels, the class-probability family, and the
Evidently snapshot built from a check."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from monitoring.drift import (
    MONTE_CARLO_DRAWS,
    NOVELTY_SHARE,
    build_snapshot,
    column_levels,
    contingency_p_value,
    detect_drift,
    ks_p_values,
    novelty_p_value,
)
from monitoring.features import NOVELTY_COLUMN, probability_column
from monitoring.report import TOP_PROBABILITIES, ReportContext, render_report

LABELS = [f"intent_{i}" for i in range(12)]


def features(rng: np.random.Generator, rows: int, moved: int | None = None) -> pd.DataFrame:
    """Prediction features with a probability column per class; ``moved``: that class's
    probability doubled (and the rest rescaled), which the label mix and the top probability
    barely show."""
    probabilities = rng.dirichlet(np.full(len(LABELS), 0.6), size=rows)
    if moved is not None:
        probabilities[:, moved] *= 2.0
        probabilities /= probabilities.sum(axis=1, keepdims=True)
    frame = pd.DataFrame(
        {
            "predicted_label": [LABELS[i] for i in probabilities.argmax(axis=1)],
            "confidence": probabilities.max(axis=1),
            "length_chars": rng.normal(40, 5, size=rows),
        }
    )
    columns = pd.DataFrame(probabilities, columns=[probability_column(label) for label in LABELS])
    return pd.concat([frame, columns], axis=1)


def test_ks_p_values_follow_scipy_and_leave_nans_out() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(2000, 4))
    current = rng.normal(0.15, size=(120, 4))
    reference[:, 3], current[:, 3] = np.round(reference[:, 3]), np.round(current[:, 3])  # ties
    current[:7, 1] = np.nan
    mine = ks_p_values(reference, current)
    scipy_p = [
        stats.ks_2samp(reference[:, j], current[:, j][~np.isnan(current[:, j])], method="exact").pvalue
        for j in range(4)
    ]
    assert mine == pytest.approx(scipy_p, rel=0.05)
    assert ks_p_values(reference[:, :1], np.full((5, 1), np.nan))[0] == 1.0


def test_alpha_is_halved_between_the_class_probabilities_and_the_other_features() -> None:
    columns = ["predicted_label", "confidence", "length_chars"] + [probability_column(x) for x in LABELS]
    levels = column_levels(columns, alpha=0.05)
    assert levels["confidence"] == pytest.approx(0.05 / 2 / 3)
    assert levels[probability_column("intent_0")] == pytest.approx(0.05 / 2 / 12)
    assert sum(levels.values()) == pytest.approx(0.05)
    assert column_levels(["confidence", "length_chars"], alpha=0.05) == {
        "confidence": 0.025,
        "length_chars": 0.025,
    }


def test_novelty_takes_its_share_of_the_other_features_half() -> None:
    others = ["predicted_label", "confidence", "length_chars", NOVELTY_COLUMN]
    levels = column_levels(others + [probability_column(x) for x in LABELS], alpha=0.05)
    assert levels[NOVELTY_COLUMN] == pytest.approx(0.05 / 2 * NOVELTY_SHARE)
    assert levels["confidence"] == pytest.approx(0.05 / 2 * (1 - NOVELTY_SHARE) / 3)
    assert levels[probability_column("intent_0")] == pytest.approx(0.05 / 2 / 12)
    assert sum(levels.values()) == pytest.approx(0.05)
    # alone, novelty is the whole family; with no class probabilities, the others' share is alpha
    assert column_levels([NOVELTY_COLUMN], alpha=0.05) == {NOVELTY_COLUMN: 0.05}
    levels = column_levels(["confidence", NOVELTY_COLUMN], alpha=0.05)
    assert levels == pytest.approx(
        {"confidence": 0.05 * (1 - NOVELTY_SHARE), NOVELTY_COLUMN: 0.05 * NOVELTY_SHARE}
    )


def test_a_shift_in_one_class_probability_is_caught_by_its_own_test() -> None:
    rng = np.random.default_rng(1)
    reference = features(rng, 2000)
    calm = detect_drift(reference, features(rng, 400), alpha=0.05)
    moved = detect_drift(reference, features(rng, 400, moved=5), alpha=0.05)

    assert calm.status == "ok", [c.column for c in calm.columns if c.drifted]
    drifted = {c.column for c in moved.columns if c.drifted}
    assert probability_column("intent_5") in drifted
    assert moved.seconds < 5  # a sanity bound only; speed is measured in benchmarks/drift_power.py


def test_the_sampled_contingency_test_alarms_at_its_level_under_no_drift() -> None:
    rng = np.random.default_rng(2)
    shares = rng.dirichlet(np.ones(30))  # 30 labels, many rare: the sampled branch
    p_values = []
    for seed in range(300):
        draw = np.random.default_rng(seed)
        reference = draw.multinomial(600, shares)
        current = draw.multinomial(60, shares)
        p_values.append(contingency_p_value(reference, current, seed=seed))
    assert np.mean(np.asarray(p_values) < 0.05) <= 0.08
    assert np.mean(np.asarray(p_values) < 0.5) == pytest.approx(0.5, abs=0.1)
    drifted = contingency_p_value(np.r_[np.full(29, 20), 0], np.r_[np.zeros(29, int), 60])
    assert drifted == pytest.approx(1 / (1 + MONTE_CARLO_DRAWS))


def test_the_sampled_contingency_test_draws_enough_to_go_below_a_small_level() -> None:
    # A Bonferroni level under 1 / (draws + 1) could never be reached by the default draws: a
    # check run at a low alpha would then never alarm on the label mix of a small window.
    reference, current = np.r_[np.full(29, 20), 0], np.r_[np.zeros(29, int), 60]
    level = 1e-4
    assert contingency_p_value(reference, current) > level
    assert contingency_p_value(reference, current, level=level) < level
    # under no drift the extra draws change nothing: the sampling stops early as before
    shares = np.random.default_rng(2).dirichlet(np.ones(30))
    draw = np.random.default_rng(7)
    calm = draw.multinomial(600, shares), draw.multinomial(60, shares)
    assert contingency_p_value(*calm, seed=3, level=level) == contingency_p_value(*calm, seed=3)


def familiarity(rng: np.random.Generator, rows: int, novel: float = 0.0) -> np.ndarray:
    """Nearest-reference distances; a share ``novel`` of them beyond every familiar one."""
    distances = rng.gamma(4.0, 0.05, size=rows)
    far = rng.random(rows) < novel
    distances[far] = rng.uniform(0.8, 1.0, size=int(far.sum()))
    return distances


def test_the_novelty_test_alarms_at_its_level_even_against_a_small_reference() -> None:
    # A 99th percentile read off 100 reference rows is itself uncertain; judged against an assumed
    # 1%, windows of 1,000 would alarm far more often than alpha.
    for reference_rows in (100, 2000):
        p_values = []
        for seed in range(1000):
            draw = np.random.default_rng(seed)
            p_values.append(novelty_p_value(familiarity(draw, reference_rows), familiarity(draw, 1000)))
        # alpha, within the noise of 1,000 windows
        assert np.mean(np.asarray(p_values) < 0.05) <= 0.06, reference_rows


def test_a_few_inputs_unlike_the_reference_drift_on_novelty_alone() -> None:
    rng = np.random.default_rng(5)
    reference = features(rng, 2000).assign(**{NOVELTY_COLUMN: familiarity(rng, 2000)})
    calm = features(rng, 1000).assign(**{NOVELTY_COLUMN: familiarity(rng, 1000)})
    newcomers = features(rng, 1000).assign(**{NOVELTY_COLUMN: familiarity(rng, 1000, novel=0.05)})

    assert not detect_drift(reference, calm, alpha=0.05).drifted
    result = detect_drift(reference, newcomers, alpha=0.05)
    assert [c.column for c in result.columns if c.drifted] == [NOVELTY_COLUMN]
    (novelty,) = [c for c in result.columns if c.column == NOVELTY_COLUMN]
    assert novelty.method == "refit_novelty_excess" and novelty.score < 1e-6
    # the same 5% barely moves the distribution as a whole: its KS test stays quiet
    distances = reference[[NOVELTY_COLUMN]].to_numpy(), newcomers[[NOVELTY_COLUMN]].to_numpy()
    assert ks_p_values(*distances)[0] > 0.01


def test_the_report_lists_the_drifted_and_the_strongest_class_probabilities_only() -> None:
    rng = np.random.default_rng(3)
    reference, current = features(rng, 2000), features(rng, 400, moved=5)
    result = detect_drift(reference, current, alpha=0.05)
    context = ReportContext("tickets", "v2", None, None, 0, "", 0.1)
    page = render_report(result, reference, current, context)

    listed = re.findall(r"<tr><td>(probability:[\w]+)</td>", page)
    assert probability_column("intent_5") in listed and len(listed) == TOP_PROBABILITIES
    assert f"{len(LABELS) - TOP_PROBABILITIES} more class-probability tests, none drifted" in page
    assert (
        f"{0.05 / 2 / 3:.2e} for each of 3 features, {0.05 / 2 / 12:.2e} for each of 12 class probabilities"
        in page
    )


def test_the_evidently_snapshot_carries_the_checks_p_values() -> None:
    rng = np.random.default_rng(4)
    reference = features(rng, 800).assign(**{NOVELTY_COLUMN: familiarity(rng, 800)})
    current = features(rng, 300, moved=5).assign(
        estimated_correct=0.9, **{NOVELTY_COLUMN: familiarity(rng, 300, novel=0.1)}
    )
    result = detect_drift(reference.assign(estimated_correct=0.9), current, alpha=0.05)
    snapshot = build_snapshot(reference.assign(estimated_correct=0.9), current, result)

    values = {
        m["config"]["column"]: m["value"]
        for m in snapshot.dict()["metrics"]
        if "ValueDrift" in m["metric_name"]
    }
    expected = {c.column: c.score for c in result.columns if not c.column.startswith("probability:")}
    assert values == pytest.approx(expected)
