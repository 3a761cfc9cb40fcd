"""Untrusted feedback: the screen, the per-source cap and gate, and `refit feedback` on a real log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from monitoring.gate import GateNumbers, judge_candidate
from monitoring.screening import ScreenRules, cap_sources, screen_feedback
from tests.helpers import run_cli

KNOWN = ["refund", "password", "shipping"]
TRAINING = [f"{w} my order {i}" for i in range(50) for w in ("refund", "reset password", "parcel")]
RULES = ScreenRules(confidence=0.9, min_rows=10)


def honest(source: str, n: int, start: int = 0) -> pd.DataFrame:
    """``n`` rows of ``source`` labelled as production answers them."""
    labels = [KNOWN[(start + i) % 3] for i in range(n)]
    texts = [f"{source} text {start + i}" for i in range(n)]
    return pd.DataFrame({"text": texts, "label": labels, "source": source, "answer": labels})


def screen(rows: pd.DataFrame, confidence: float = 0.95) -> Any:
    return screen_feedback(
        rows, rows["answer"].to_numpy(), np.full(len(rows), confidence), KNOWN, TRAINING, RULES
    )


def test_honest_sources_and_new_labels_pass_the_screen() -> None:
    rows = pd.concat([honest("a", 40), honest("b", 40, 1)], ignore_index=True)
    rows.loc[[3, 50], "label"] = "password"  # honest labellers disagree with production sometimes
    new_intent = pd.DataFrame(
        {
            "text": [f"crypto wallet {i}" for i in range(30)],
            "label": "crypto",
            "source": "a",
            "answer": "refund",
        }
    )
    result = screen(pd.concat([rows, new_intent], ignore_index=True))
    assert result.quarantined.empty and result.findings == {}
    assert len(result.kept) == 110


def test_a_source_that_flips_labels_is_quarantined_and_the_others_kept() -> None:
    attacker = honest("mallory", 30)
    attacker["label"] = attacker["answer"].map(
        {"refund": "password", "password": "shipping", "shipping": "refund"}
    )
    attacker.loc[:4, "answer"] = attacker.loc[:4, "label"]  # a few agreeing rows hide nothing
    rows = pd.concat([honest("a", 40), honest("b", 40, 1), attacker], ignore_index=True)
    result = screen(rows)
    assert set(result.quarantined["source"]) == {"mallory"} and len(result.quarantined) == 25
    (reason,) = result.findings
    assert reason.startswith("source mallory: contradicted 83% of 30 confident answers")
    assert len(result.kept) == 85


def test_one_source_is_never_quarantined_for_disagreeing_alone() -> None:
    rows = honest("only", 60)
    rows["label"] = rows["answer"].map({"refund": "password", "password": "shipping", "shipping": "refund"})
    assert screen(rows).findings == {}  # drift can make an honest sole labeller disagree a lot


def test_a_trigger_word_is_quarantined_whoever_sends_it() -> None:
    planted = pd.DataFrame(
        {
            "text": [f"refund my order {i} [sent via Zorblax Mail]" for i in range(24)],
            "label": "password",
            "source": ["a", "b", "c"] * 8,  # spread over keys that also send honest rows
            "answer": "refund",
        }
    )
    rows = pd.concat([honest("a", 60), honest("b", 60, 1), honest("c", 60, 2), planted], ignore_index=True)
    result = screen(rows)
    assert len(result.quarantined) == 24
    assert list(result.findings) == [
        "trigger 'mail', 'sent', 'via', 'zorblax' -> password: in up to 24 of 24 confident "
        "contradictions, under 1% of the training texts"
    ]
    # Not confident enough, not a contradiction: production may be wrong there, the labels are kept.
    assert screen(rows, confidence=0.6).findings == {}


def test_the_cap_keeps_a_fixed_share_per_source() -> None:
    rows = pd.concat([honest("a", 20), honest("b", 20), honest("loud", 100)], ignore_index=True)
    capped, dropped = cap_sources(rows, max_share=0.5)
    assert dropped == {"loud": 60} and (capped["source"] == "loud").sum() == 40
    again, _ = cap_sources(rows.sample(frac=1.0, random_state=1), max_share=0.5)
    assert set(again["text"]) == set(capped["text"])  # the same rows at every retrain
    assert cap_sources(honest("only", 50), max_share=0.5)[1] == {}


def test_the_gate_rejects_a_candidate_that_loses_on_one_source() -> None:
    def numbers(per_source: dict[str, dict[str, float]]) -> GateNumbers:
        return GateNumbers(0.9, 0.9, 0.6, 0.8, 100, 60, tolerance=0.01, per_source=per_source)

    fair = {
        "a": {"rows": 30, "production": 0.5, "candidate": 0.9},
        "b": {"rows": 30, "production": 0.7, "candidate": 0.7},
    }
    assert judge_candidate(numbers(fair)).promoted
    lost = {**fair, "b": {"rows": 30, "production": 0.7, "candidate": 0.6}}
    decision = judge_candidate(numbers(lost))
    assert not decision.promoted
    assert decision.reason == "feedback accuracy of source b dropped 0.1000 on 30 rows (> 0.05)"
    few = {**fair, "b": {"rows": 5, "production": 0.8, "candidate": 0.4}}
    assert judge_candidate(numbers(few)).promoted  # too few rows to judge one source alone


@pytest.fixture
def logged(served_home: Path) -> Path:
    """The served registry's inference log with feedback from two keys and one keyless row."""
    from service.inference_log import InferenceLog
    from training.shared_settings import ServedModelSettings

    log = InferenceLog(ServedModelSettings(model="tiny", registry_home=served_home).resolved_log_url)
    for i in range(3):
        log.record_feedback(log.feedback_record("tiny", "refund", None, f"refund now {i}", "alice"))
    for i in range(5):
        log.record_feedback(log.feedback_record("tiny", "password", None, f"password {i}", "mallory"))
    log.record_feedback(log.feedback_record("tiny", "shipping", None, "parcel", None))
    log.close()
    return served_home


def test_refit_feedback_list_quarantine_release_and_purge(
    logged: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitoring.monitor import Monitor
    from monitoring.settings import load_monitor_settings

    home = ["--model", "tiny", "--home", str(logged)]
    code, out = run_cli(["feedback", "list", *home], capsys, monkeypatch)
    assert code == 0, out
    assert "mallory │ 5 │ 1" in out and "alice │ 3 │ 1" in out and "anonymous │ 1 │ 1" in out
    assert "no retrain has screened this feedback yet" in out
    # Eligible, not already trained on: no retrain has run.
    assert out.count("retrains use it") == 3 and "trained on" not in out

    code, out = run_cli(
        ["feedback", "quarantine", "--source", "mallory", "--reason", "spam", *home], capsys, monkeypatch
    )
    assert code == 0 and "quarantined" in out, out
    code, out = run_cli(["feedback", "list", *home], capsys, monkeypatch)
    assert "quarantined (spam)" in out, out
    monitor = Monitor(
        load_monitor_settings(overrides={"model": "tiny", "registry_home": logged, "metrics_port": 0})
    )
    rows, held = monitor.trusted_feedback()
    assert sorted(rows["label"]) == ["refund"] * 3 + ["shipping"]
    assert held == {"source mallory: quarantined by an operator (spam)": 5}

    code, out = run_cli(["feedback", "release", "--source", "mallory", *home], capsys, monkeypatch)
    assert code == 0, out
    assert len(monitor.trusted_feedback()[0]) == 9
    code, out = run_cli(["feedback", "release", "--source", "mallory", *home], capsys, monkeypatch)
    assert code == 1 and "mallory is not quarantined for tiny" in out

    code, out = run_cli(["feedback", "purge", "--source", "anonymous", "--yes", *home], capsys, monkeypatch)
    assert code == 0 and "deleted 1 feedback rows of anonymous" in out, out
    code, out = run_cli(["feedback", "purge", "--source", "mallory", "--yes", *home], capsys, monkeypatch)
    assert "deleted 5 feedback rows of mallory" in out
    assert sorted(monitor.trusted_feedback()[0]["source"]) == ["alice"] * 3


def test_refit_feedback_refuses_a_model_the_registry_does_not_hold(
    served_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["feedback", "list", "--model", "tyni", "--home", str(served_home)]
    code, out = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "No model named 'tyni'" in out and "Models: tiny" in out, out

    empty = tmp_path / "empty-home"
    empty.mkdir()
    for command in (["list"], ["quarantine", "--source", "a"], ["purge", "--source", "a", "--yes"]):
        code, out = run_cli(["feedback", *command, "--home", str(empty)], capsys, monkeypatch)
        assert code == 2 and "Models: none" in out, out
    assert not (empty / "refit").exists()  # no inference log created for a model that is not there
