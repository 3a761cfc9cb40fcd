"""`refit monitor` as the README shows it: a real process started with flags, scraped over HTTP."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.processes import free_port, start_process
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # a real `refit monitor` process


def refit_command() -> str:
    """The installed `refit` console script of this virtualenv."""
    return str(Path(sys.executable).with_name("refit"))


def scrape_checks(url: str) -> dict[str, float]:
    """``refit_drift_checks_total`` samples by their label text, from the monitor's /metrics."""
    samples: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("refit_drift_checks_total{"):
            labels, value = line.rsplit(" ", 1)
            samples[labels] = float(value)
    return samples


def test_refit_monitor_checks_the_model_its_flags_name(served_home: Path, tmp_path: Path) -> None:
    port = free_port()
    command = [refit_command(), "monitor", "--model", "tiny", "--home", str(served_home)]
    command += ["--mode", "alert", "--interval", "1s", "--port", str(port)]
    # Nothing from the environment may name the model: only the flags do.
    assert not any(key.startswith("REFIT_MONITOR_") for key in os.environ)
    monitor = start_process(command, {}, tmp_path / "monitor.log", f"http://127.0.0.1:{port}", "/metrics")
    try:
        monitor.wait_ready(timeout=120)
        deadline = time.monotonic() + 60
        checks: dict[str, float] = {}
        while time.monotonic() < deadline:
            checks = scrape_checks(monitor.url)
            if checks.get('refit_drift_checks_total{model="tiny",status="insufficient_data"}', 0) >= 2:
                break
            time.sleep(0.5)
    finally:
        monitor.stop()
    log = monitor.log_path.read_text(errors="replace")
    assert checks.get('refit_drift_checks_total{model="tiny",status="insufficient_data"}', 0) >= 2, (
        checks,
        log[-2000:],
    )
    assert "monitoring tiny every 1 s, mode alert" in log, log[-2000:]
    assert "refit-classifier" not in log and "check of tiny skipped" not in log, log[-2000:]
    assert checks.get('refit_drift_checks_total{model="tiny",status="skipped"}', 0) == 0


def test_refit_drift_checks_the_version_that_answers_and_says_production_differs(
    client: Any, served_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.registry import ModelRegistry

    answers = client.post("/classify", json={"texts": ["track my parcel", "reset my password"]}).json()
    client.get("/model")  # the log is flushed within its 20 ms before the next request is answered
    served = answers[0]["version"]
    registry = ModelRegistry(served_home)
    # Production moves on, but nothing answers with it (a fleet that could not load it).
    promoted = registry.promote(registry.get("tiny:candidate").tag, reason="test").version
    time.sleep(0.5)
    code, out = run_cli(["drift", "--model", "tiny", "--home", str(served_home)], capsys, monkeypatch)
    assert code == 0, out
    assert f"tiny:{served} window 2" in out, out
    assert f"production is {promoted}, but {served} answered the last logged predictions" in out
    assert "no request has reached production since its promotion" in out


def test_refit_retrain_archives_the_candidate_its_gate_rejects(
    client: Any,
    served_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from monitoring.history import read_retrains
    from service.inference_log_db import create_log_engine
    from tests.helpers import tiny_rows
    from training.registry import ModelRegistry
    from training.shared_settings import ServedModelSettings

    rows = tiny_rows()  # every label flipped: a candidate trained on them loses on the test split
    flipped = rows["label"].map({"refund": "password", "password": "shipping", "shipping": "refund"})
    for text, label in zip(rows["text"], flipped, strict=True):
        assert client.post("/feedback", json={"text": text, "label": label}).status_code == 200
    config = tmp_path / "monitor.yaml"
    config.write_text("min_feedback: 10\nmetrics_port: 0\n")
    args = ["retrain", "--model", "tiny", "--home", str(served_home), "--config", str(config)]
    code, out = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "retrain: rejected" in out, out
    url = ServedModelSettings(model="tiny", registry_home=served_home).resolved_log_url
    audit = read_retrains(create_log_engine(url), "tiny")[0]
    candidate = ModelRegistry(served_home).get(f"tiny:{audit['candidate_version']}")
    assert candidate.stage == "archived"  # a rejected candidate may not be pinned any more
    code, out = run_cli(["models", "show", candidate.tag, "--home", str(served_home)], capsys, monkeypatch)
    # Its metrics name production's test split, not the retrain's temporary test.csv.
    assert code == 0 and f"file test-split-of-tiny-{audit['production_version']}.csv" in out, out
    # The feedback repeats the training file, test split included: those rows were not trained on.
    tested = audit["numbers"]["feedback_test_rows"]
    code, out = run_cli(
        ["feedback", "list", "--model", "tiny", "--home", str(served_home)], capsys, monkeypatch
    )
    assert code == 0 and tested > 0, out
    assert f"left out {tested} rows on texts of production's test split (the gate tests on them)" in out
    pinned = client.post(
        "/classify", json={"texts": ["refund now"]}, headers={"X-Model-Version": candidate.version}
    )
    assert pinned.status_code == 403 and "allow-pin" in pinned.text, pinned.text


def test_refit_retrain_trains_on_no_feedback_about_texts_of_the_test_split(
    client: Any,
    served_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training.artifacts import read_split
    from training.registry import ModelRegistry

    # Traffic repeats short texts: labels sent for the test split's own texts would be trained on,
    # and the gate's test-split check and the new version's test metrics would read learnt rows.
    test = read_split(ModelRegistry(served_home).get("tiny:production"), "test")
    for text, label in zip(test["text"], test["label"], strict=True):
        assert client.post("/feedback", json={"text": text, "label": label}).status_code == 200
    config = tmp_path / "monitor.yaml"
    config.write_text("min_feedback: 1\nmetrics_port: 0\n")
    args = ["retrain", "--model", "tiny", "--home", str(served_home), "--config", str(config)]
    code, out = run_cli(args, capsys, monkeypatch)
    texts = test["text"].nunique()
    assert code == 0 and "retrain: skipped" in out, out
    assert f"0 feedback labels besides the {texts} on texts of the test split (never trained on)" in out


def test_without_model_the_registrys_only_model_is_used(
    served_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = run_cli(["drift", "--home", str(served_home)], capsys, monkeypatch)
    assert code == 0, out
    assert "tiny:" in out and "insufficient_data" in out
    # A new user's first check: how many there were, how many it takes, and what to do.
    assert "fewer than min_window (100): no test was run. Widen --since" in " ".join(out.split())


def test_without_model_a_registry_of_several_is_a_clear_error(
    served_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    shutil.copytree(served_home / "models" / "tiny", served_home / "models" / "other")
    for manifest in (served_home / "models" / "other").glob("*/model.yaml"):
        manifest.write_text(manifest.read_text().replace("name: tiny", "name: other"))
    code, out = run_cli(["retrain", "--home", str(served_home)], capsys, monkeypatch)
    assert code == 2
    assert f"No model named and the registry {served_home} holds 2: other, tiny." in out
    assert "Pass --model NAME or set REFIT_MONITOR_MODEL." in out


def test_monitor_refuses_a_metrics_port_in_use(
    served_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = ["monitor", "--home", str(served_home), "--port", str(port), "--interval", "1m"]
        code, out = run_cli(args, capsys, monkeypatch)
    said = " ".join(out.split())
    assert code == 2, said
    assert f"Cannot listen on 127.0.0.1:{port}: another process listens there" in said
    assert "pass --port (0: no metrics)" in said and "monitoring tiny" not in said
