"""Smoke tests of the side-by-side benchmarks: Refit's side always; a peer's side only where its
virtualenv already exists (CI does not install peers), else skipped with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.peers import PEERS, PeerUnavailable, peer_python
from tests.test_benchmarks import write_look_alike

pytestmark = pytest.mark.slow  # each benchmark end to end on a tiny budget


def installed(peer: str) -> bool:
    return (PEERS / peer / ".venv" / ".installed").is_file()


def accuracy_estimate_args(tmp_path: Path, tiny_base_model: Path, peers: str) -> list[str]:
    return [
        "--data", str(write_look_alike(tmp_path)), "--home", str(tmp_path / "home"),
        "--base-model", str(tiny_base_model), "--max-length", "16", "--windows", "20,40",
        "--trials", "3", "--peers", peers, "--out", str(tmp_path),
    ]  # fmt: skip


def test_accuracy_estimate_smoke(tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import accuracy_estimate

    rows = accuracy_estimate.main(accuracy_estimate_args(tmp_path, tiny_base_model, ""))
    assert json.loads((tmp_path / "accuracy_estimate.json").read_text()) == rows
    assert all(set(r) == {"estimator", "scenario", "window", "mae", "trials"} for r in rows)
    cells = {(r["scenario"], r["window"]) for r in rows}
    assert cells == {(s, w) for s in accuracy_estimate.SCENARIOS for w in (20, 40)}
    assert {r["estimator"] for r in rows} == {"refit"}
    assert all(0.0 <= r["mae"] <= 1.0 and r["trials"] == 3 for r in rows)
    table = (tmp_path / "accuracy_estimate.md").read_text()
    assert "| none | 20 | 3 |" in table and "`refit`" in table
    assert (tmp_path / "accuracy_estimate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not installed("nannyml"), reason="the nannyml peer's virtualenv is not installed here")
def test_accuracy_estimate_runs_nannyml_beside_refit(tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import accuracy_estimate

    rows = accuracy_estimate.main(accuracy_estimate_args(tmp_path, tiny_base_model, "nannyml"))
    by = {(r["estimator"], r["scenario"], r["window"]): r for r in rows}
    assert {e for e, _, _ in by} == {"refit", "nannyml"}
    assert all(0.0 <= r["mae"] <= 1.0 for r in rows)
    assert "NannyML 0.13.1" in (tmp_path / "accuracy_estimate.md").read_text()


def test_a_peer_that_cannot_be_installed_says_why(tmp_path: Path) -> None:
    (tmp_path / "ghost").mkdir()
    (tmp_path / "ghost" / "requirements.txt").write_text("refit-peer-that-does-not-exist==0.0.1\n")
    with pytest.raises(PeerUnavailable, match=r"ghost: .*failed:\n(.|\n)*refit-peer-that-does-not-exist"):
        peer_python("ghost", root=tmp_path)
    with pytest.raises(PeerUnavailable, match=r"no .*requirements\.txt"):
        peer_python("absent", root=tmp_path)


@pytest.mark.skipif(not installed("setfit"), reason="the setfit peer's virtualenv is not installed here")
def test_train_banking77_runs_setfit_beside_refit(tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import train_banking77

    rows = train_banking77.main(
        [
            "--data", str(write_look_alike(tmp_path)), "--budgets", "4", "--seeds", "1",
            "--strategies", "setfit,head", "--setfit-iterations", "1", "--base-model", str(tiny_base_model),
            "--set", "max_length=16", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert [r["strategy"] for r in rows] == ["setfit", "head"]
    setfit = rows[0]
    assert set(setfit) == set(rows[1]) and 0.0 <= setfit["accuracy"] <= 1.0
    assert setfit["trainable_params"] > 0 and setfit["train_seconds"] > 0
    assert "| setfit | 4 | 1 |" in (tmp_path / "train_banking77.md").read_text()


def test_train_banking77_appends_cells_and_says_which_peer_did_not_run(tmp_path: Path) -> None:
    from benchmarks import train_banking77

    row = {"strategy": "head", "per_class": 10, "seed": 0, "accuracy": 0.85, "macro_f1": 0.85,
           "train_seconds": 20.0, "peak_rss_mb": 900.0, "trainable_params": 29645}  # fmt: skip
    kept = [row, {**row, "seed": 1}]
    merged = train_banking77.merge_rows(kept, [{**row, "accuracy": 0.86}, {**row, "strategy": "setfit"}])
    assert [(r["strategy"], r["seed"], r["accuracy"]) for r in merged] == [
        ("head", 0, 0.86),
        ("head", 1, 0.85),
        ("setfit", 0, 0.85),
    ]
    note = "`setfit` did not run (10 per intent, seed 0): setfit: pip install failed"
    env = {"device": "CPU", "torch": "2.13.0", "when": "2026-12-03"}
    table = train_banking77.render_markdown(merged, env, (note,))
    assert note in table and "| setfit | 10 | 1 |" in table


@pytest.mark.skipif(not installed("alibi"), reason="the alibi peer's virtualenv is not installed here")
def test_drift_power_runs_alibi_detectors_beside_refit(tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import drift_power

    rows = drift_power.main(
        [
            "--data", str(write_look_alike(tmp_path)), "--home", str(tmp_path / "home"),
            "--base-model", str(tiny_base_model), "--max-length", "16", "--windows", "20",
            "--scenarios", "none,typos", "--trials", "2", "--none-trials", "2", "--baseline-trials", "0",
            "--e2e-trials", "0", "--peers", "alibi-mmd,alibi-classifier,alibi-bbsd", "--peer-trials", "2",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "drift_power.json").read_text())
    assert saved == sorted(saved, key=lambda r: (r["scenario"] != "none", r["detector"] != "refit"))
    cells = {(r["detector"], r["scenario"]) for r in saved}
    detectors = ("refit", "alibi-mmd", "alibi-classifier", "alibi-bbsd")
    assert cells == {(d, s) for d in detectors for s in ("none", "typos")}
    peers = [r for r in rows if r["detector"].startswith("alibi-")]
    assert all(r["trials"] == 2 and 0.0 <= r["rate"] <= 1.0 and r["seconds_per_check"] > 0 for r in peers)
    assert "alibi-bbsd" in (tmp_path / "drift_power.md").read_text()
