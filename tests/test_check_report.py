"""The check's report, retention of reports and snapshots, and the trust in the accuracy estimate."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import NOVELTY_SHARE, detect_drift
from monitoring.features import NOVELTY_COLUMN, probability_column
from monitoring.reference import assess_estimate
from monitoring.report import ReportContext, render_report
from monitoring.retention import prune_reports, stale_snapshots
from training.novelty import nearest_distance


def features(rng: np.random.Generator, rows: int, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "predicted_label": rng.choice(["refund", "password", "shipping"], size=rows),
            "confidence": rng.beta(8, 2, size=rows),
            "length_chars": rng.normal(40 + shift, 5, size=rows),
        }
    )


def test_the_report_opens_on_its_summary_and_ranks_features_by_evidence() -> None:
    rng = np.random.default_rng(0)
    reference, current = features(rng, 600), features(rng, 300, shift=30.0)
    result = detect_drift(reference, current, alpha=0.05)
    context = ReportContext("tickets", "v2", 0.81, 0.64, 40, "NOT TRUSTED: 30 of 300 texts", 1.234)
    page = render_report(result, reference, current, context)

    summary = page[: page.index("<h2>")]
    for expected in (
        ">DRIFT<",
        "1 of 3 (share 0.33)",
        f"{0.05 / 3:.2e} (alpha / features, Bonferroni)",
        "300 predictions of v2",
        "600 held-out rows",
        "estimated (CBPE) 0.810; observed 0.640 on 40 feedback labels",
        "NOT TRUSTED: 30 of 300 texts",
        "1.23 s",
    ):
        assert expected in summary, expected
    ranked = re.findall(r"<tr><td>(\w+)</td><td>[\w]+</td><td>([0-9.e+-]+)</td>", page)
    assert ranked[0][0] == "length_chars"
    p_values = [float(p) for _, p in ranked]
    assert p_values == sorted(p_values)
    assert re.search(r"<td>\d\.\d\de-\d+</td>", page), "p-values in scientific notation"
    assert page.count("<svg") == 3 and "<script" not in page
    assert len(page.encode()) < 100_000


def test_the_report_states_the_level_of_each_group_of_features() -> None:
    rng = np.random.default_rng(1)

    def grouped(rows: int) -> pd.DataFrame:
        probabilities = rng.dirichlet(np.ones(3), size=rows)
        return features(rng, rows).assign(
            **{NOVELTY_COLUMN: rng.gamma(4.0, 0.05, size=rows)},
            **{probability_column(f"intent_{i}"): probabilities[:, i] for i in range(3)},
        )

    reference, current = grouped(600), grouped(300)
    result = detect_drift(reference, current, alpha=0.05)
    context = ReportContext("tickets", "v2", None, None, 0, "trusted", 0.5)
    page = render_report(result, reference, current, context)
    summary = page[: page.index("<h2>")]
    expected = (
        f"{0.025 * (1 - NOVELTY_SHARE) / 3:.2e} for each of 3 features, {0.025 * NOVELTY_SHARE:.2e} for "
        f"novelty, {0.025 / 3:.2e} for each of 3 class probabilities (weighted Bonferroni: the levels "
        "sum to alpha)"
    )
    assert expected in summary


def test_reports_beyond_the_count_or_the_age_are_deleted(tmp_path: Path) -> None:
    now = time.time()
    for i in range(5):
        path = tmp_path / f"tickets-drift-{i}.html"
        path.write_text("r")
        os.utime(path, (now - i * 60, now - i * 60))
    old = tmp_path / "tickets-drift-old.html"
    old.write_text("r")
    os.utime(old, (now - 3 * 86400, now - 3 * 86400))
    other = tmp_path / "billing-drift-0.html"
    other.write_text("r")

    assert prune_reports(tmp_path, "tickets-drift-", keep=3, max_age_days=1) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "billing-drift-0.html",
        "tickets-drift-0.html",
        "tickets-drift-1.html",
        "tickets-drift-2.html",
    ]


def uuid7(milliseconds: float) -> uuid.UUID:
    """A version-7 UUID for a given Unix time in ms (what Evidently names snapshots with)."""
    return uuid.UUID(int=(int(milliseconds) << 80) | (0x7 << 76) | 1)


def test_snapshots_beyond_the_count_or_the_age_are_chosen_from_their_ids() -> None:
    now_ms = time.time() * 1000
    ids = [uuid7(now_ms - minutes * 60_000) for minutes in (0, 1, 2, 3)] + [uuid7(now_ms - 3 * 86_400_000)]
    assert stale_snapshots(ids, keep=3, max_age_days=1) == [ids[3], ids[4]]
    assert stale_snapshots(ids, keep=10, max_age_days=1) == [ids[4]]


def test_nearest_distance_is_cosine_and_leave_one_out_skips_the_row_itself() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert nearest_distance(np.array([[3.0, 0.0]]), reference)[0] == pytest.approx(0.0, abs=1e-6)
    loo = nearest_distance(reference, reference, exclude_self=True)
    assert loo == pytest.approx([1 - 2**-0.5] * 3, abs=1e-6)


@pytest.mark.parametrize(
    ("novel", "total", "trusted", "excess"),
    [
        (5, 500, True, False),
        (9, 500, True, False),  # binomial p 0.067
        (17, 450, True, True),  # p 4e-6, but 3.8% of the window
        (30, 500, False, True),
        (250, 500, False, True),
        (2, 40, True, False),
        (4, 40, False, True),
    ],
)
def test_the_estimate_is_untrusted_when_the_window_holds_many_novel_texts(
    novel: int, total: int, trusted: bool, excess: bool
) -> None:
    distances = np.r_[np.full(novel, 0.9), np.full(total - novel, 0.1)]
    verdict, share, note = assess_estimate(distances, threshold=0.5, alpha=0.05)
    assert verdict is trusted and share == pytest.approx(novel / total)
    assert note.startswith("NOT TRUSTED") is (not trusted)
    assert f"{novel} of {total} inputs" in note
    # A significant excess is never said to look like the reference, trusted or not.
    assert ("look like the reference" in note) is (not excess)
    assert ("more than chance" in note) is (trusted and excess)


def test_progress_off_a_terminal_is_plain_lines() -> None:
    import io

    from rich.console import Console

    from training.progress import track_progress

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    items = list(
        track_progress(range(4), "embedding train", total=4, unit="batches", console=console, every_s=0)
    )
    assert items == [0, 1, 2, 3]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("embedding train: 1/4 batches (25%), ")
    assert lines[-1].startswith("embedding train: 4/4 batches (100%), ")
