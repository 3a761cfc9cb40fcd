"""The retrain's pure parts: the feedback split, the gate's rules, the refit rule, the policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from monitoring.feedback import (
    drop_seen_rows,
    hold_back_rare_new_labels,
    merge_feedback,
    split_feedback,
    split_retrain_data,
)
from monitoring.gate import GateNumbers, judge_candidate, refit_passes
from monitoring.policy import decide
from monitoring.retrain import ship_refit
from training.registry import ModelVersion


def gate_numbers(**values: Any) -> GateNumbers:
    """Gate numbers with a 0.01 tolerance; accuracies 0.9 unless given."""
    accuracies = dict.fromkeys(
        (
            "production_test_accuracy",
            "candidate_test_accuracy",
            "production_feedback_accuracy",
            "candidate_feedback_accuracy",
        ),
        0.9,
    )
    return GateNumbers(
        **{**accuracies, **values}, feedback_train_rows=10, feedback_gate_rows=5, tolerance=0.01
    )


@pytest.mark.parametrize(
    ("numbers", "outcome"),
    [
        (
            {
                "candidate_feedback_accuracy": 0.9,
                "production_feedback_accuracy": 0.7,
                "production_test_accuracy": 0.95,
                "candidate_test_accuracy": 0.95,
            },
            "promoted",
        ),
        (
            {
                "candidate_feedback_accuracy": 0.7,
                "production_feedback_accuracy": 0.7,
                "production_test_accuracy": 0.95,
                "candidate_test_accuracy": 0.96,
            },
            "rejected",
        ),
        (
            {
                "candidate_feedback_accuracy": 0.9,
                "production_feedback_accuracy": 0.7,
                "production_test_accuracy": 0.95,
                "candidate_test_accuracy": 0.90,
            },
            "rejected",
        ),
    ],
)
def test_gate_rules(numbers: dict[str, float], outcome: str) -> None:
    decision = judge_candidate(gate_numbers(**numbers))
    assert decision.outcome == outcome
    assert decision.numbers.to_json()["tolerance"] == 0.01


def test_the_gate_names_its_feedback_rows_and_an_unchanged_test_accuracy_as_plus_zero() -> None:
    numbers = gate_numbers(
        candidate_feedback_accuracy=1.0,
        production_feedback_accuracy=0.8,
        production_test_accuracy=1.0,
        candidate_test_accuracy=1.0,
    )
    decision = judge_candidate(numbers)
    rows = numbers.feedback_gate_rows
    assert decision.reason == (
        f"feedback accuracy +0.2000 on {rows} held-out rows, test accuracy change +0.0000"
    )


def test_the_gate_rejects_without_held_out_feedback() -> None:
    numbers = gate_numbers(
        candidate_feedback_accuracy=float("nan"),
        production_feedback_accuracy=float("nan"),
        production_test_accuracy=0.9,
        candidate_test_accuracy=0.9,
    )
    decision = judge_candidate(numbers)
    assert decision.outcome == "rejected" and decision.reason == "no held-out feedback to compare on"
    stored = decision.numbers.to_json()
    assert stored["candidate_feedback_accuracy"] is None and "refit_version" not in stored
    json.dumps(stored, allow_nan=False)  # what retrain_runs stores is valid JSON


def test_a_refit_ships_only_within_the_tolerance_of_production() -> None:
    numbers = gate_numbers(production_test_accuracy=0.95)
    numbers.refit_test_accuracy = 0.945
    assert refit_passes(numbers)
    numbers.refit_test_accuracy = 0.93
    assert not refit_passes(numbers)


def test_policy_ignores_small_windows_and_other_versions() -> None:
    now = datetime.now(UTC)
    checks = [
        {"version": "v2", "status": "drift"},
        {"version": "v2", "status": "insufficient_data"},
        {"version": "v2", "status": "drift"},
        {"version": "v1", "status": "drift"},
    ]
    common = {"persist_checks": 2, "cooldown_s": 60.0, "mode": "retrain", "now": now}
    assert decide(checks, "v2", last_retrain=None, **common).action == "retrain"
    assert decide(checks, "v2", last_retrain=now - timedelta(seconds=10), **common).action == "alert"
    assert decide(checks, "v1", last_retrain=None, **common).action == "none"
    assert decide(checks, "v2", last_retrain=None, **{**common, "mode": "alert"}).action == "report"
    in_cooldown = {**common, "mode": "alert", "last_retrain": now - timedelta(seconds=10)}
    assert decide(checks, "v2", **in_cooldown).action == "alert"


def test_new_labels_with_too_few_examples_wait_for_more_feedback() -> None:
    rows = pd.DataFrame(
        {
            "text": [f"t{i}" for i in range(7)],
            "label": ["known", "new_a", "new_a", "new_a", "new_b", "known", "new_b"],
        }
    )
    kept, held = hold_back_rare_new_labels(rows, ["known"], min_examples=3)
    assert held == {"new_b": 2}
    assert sorted(kept["label"]) == ["known", "known", "new_a", "new_a", "new_a"]


def test_feedback_rows_keep_their_side_of_the_gate_split_as_feedback_grows() -> None:
    rows = pd.DataFrame({"text": [f"text {i}" for i in range(400)], "label": ["a", "b"] * 200})
    train_early, gate_early = split_feedback(rows.head(200), holdout=0.3)
    train_late, gate_late = split_feedback(rows, holdout=0.3)
    # No row a production version trained on may turn up in a later gate, nor the reverse.
    assert set(train_early["text"]) <= set(train_late["text"])
    assert set(gate_early["text"]) <= set(gate_late["text"])
    assert 0.2 < len(gate_late) / len(rows) < 0.4


def test_feedback_replaces_older_labels_of_the_same_text() -> None:
    original = pd.DataFrame(
        {"text": ["lost card", "top up", "refund"], "label": ["card", "top_up", "refund"]}
    )
    feedback = pd.DataFrame({"text": ["lost  card", "new text"], "label": ["card_lost", "refund"]})
    merged = merge_feedback(original, feedback)
    assert sorted(zip(merged["text"], merged["label"], strict=True)) == [
        ("lost  card", "card_lost"),  # the feedback label wins, the older row is gone
        ("new text", "refund"),
        ("refund", "refund"),
        ("top up", "top_up"),
    ]


def test_the_gate_compares_only_on_rows_production_never_trained_on() -> None:
    seen = pd.DataFrame({"text": ["gate row  one ", "train row"], "label": ["a", "b"]})
    gate = pd.DataFrame({"text": ["gate row one", "gate row two"], "label": ["a", "a"]})
    assert list(drop_seen_rows(seen, gate)["text"]) == ["gate row two"]


def test_a_failed_refit_ships_the_gated_candidate(tmp_path: Path) -> None:
    candidate = ModelVersion("support", "v2", tmp_path, "candidate", "", {})

    def crashing_refit() -> ModelVersion:
        raise RuntimeError("`refit train` exited with 1: out of memory")

    numbers = gate_numbers()
    shipped = ship_refit(crashing_refit, candidate, pd.DataFrame(), numbers)
    assert shipped is candidate
    assert numbers.refit_version is None and numbers.refit_error is not None
    assert "out of memory" in numbers.refit_error


def test_feedback_for_a_retrain_is_split_three_ways() -> None:
    original = pd.DataFrame({"text": ["seen one", "seen two"], "label": ["a", "b"]})
    texts = [f"feedback {i}" for i in range(60)] + ["seen one"]
    feedback = pd.DataFrame({"text": texts, "label": ["a", "b", "new"] * 20 + ["a"]})
    test = pd.DataFrame({"text": ["tested one"], "label": ["a"]})
    data = split_retrain_data(original, test, ["a", "b"], feedback, holdout=0.3, min_examples=1)
    gate, train, refit = set(data.gate["text"]), set(data.train["text"]), set(data.refit["text"])
    assert gate and train and not gate & train and refit == gate | train
    assert "seen one" not in gate  # production trained on it
    assert data.test_rows == 0


def test_feedback_on_a_test_text_is_trained_on_by_neither_the_candidate_nor_the_refit() -> None:
    original = pd.DataFrame({"text": ["seen one"], "label": ["a"]})
    test = pd.DataFrame({"text": ["Where is my card?", "tested two"], "label": ["a", "b"]})
    texts = [f"feedback {i}" for i in range(40)] + ["Where is  my card? ", "tested two"]
    feedback = pd.DataFrame({"text": texts, "label": ["a", "b"] * 21})
    data = split_retrain_data(original, test, ["a", "b"], feedback, holdout=0.3, min_examples=1)
    used = set(data.train["text"]) | set(data.gate["text"]) | set(data.refit["text"])
    assert len(used) == 40 and not {t for t in used if not t.startswith("feedback")}
    assert data.test_rows == 2  # compared as texts are: spacing aside
    assert data.held_back == {}
