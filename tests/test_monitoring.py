"""Monitoring on the generated support tickets, traffic through the service.

A session fixture trains `head` on the demo data with a small random BERT whose vocabulary is the
demo's words except the typos' (the real MiniLM runs this loop in the demo, tests/test_loop.py);
each test gets a copy of that registry and an empty inference log, fills the log through the
in-process service, then checks, decides, retrains.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from demo.data import NEW_INTENTS, write_demo_data
from monitoring.history import acquire_lease, read_checks, read_retrains, record_retrain, release_lease
from monitoring.monitor import Monitor
from monitoring.retrain import RetrainResult
from monitoring.settings import MonitorSettings, load_monitor_settings
from service.inference_log_db import create_log_engine
from tests.helpers import SERVICE_LIMITS, build_service_app, run_cli, save_tiny_bert, service_env
from training.config import TrainingConfig
from training.onnx_files import read_export_record
from training.pipeline import train_model
from training.registry import ModelRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("monitoring")
    paths = write_demo_data(root / "data")
    # Hidden 128: the head tests at 0.93 (MiniLM's 0.96). At 256 the calm window alarmed on an
    # embedding axis: a random encoder's flat spectrum fitted on 240 reference rows is mostly noise.
    words = set()
    for name in ("train", "traffic", "drift_new_intents", "drift_new_products"):
        for text in pd.read_csv(paths[name])["text"]:
            words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    encoder = save_tiny_bert(root / "encoder", words, hidden_size=128, max_tokens=128)
    registry = ModelRegistry(root / "bentoml")
    config = TrainingConfig(name="support", base_model=str(encoder), strategy="head", profile_rows=400)
    version = train_model(paths["train"], config, registry=registry).version
    assert version is not None
    return {"home": root / "bentoml", "data": paths, "version": version.version}


@pytest.fixture
def home(demo_home: dict[str, Any], tmp_path: Path) -> Path:
    copy = tmp_path / "bentoml"
    shutil.copytree(demo_home["home"], copy)
    return copy


@pytest.fixture
def send(service_class: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A function that classifies texts through the in-process service (which logs them)."""
    from starlette.testclient import TestClient

    for key, value in {
        **SERVICE_LIMITS,
        "REFIT_SERVE_MODEL": "support",
        "REFIT_SERVE_REGISTRY_HOME": str(home),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("REFIT_SERVE_LOG_FLUSH_MS", "10")
    monkeypatch.setenv("REFIT_SERVE_FEEDBACK_EXTRA_LABELS", json.dumps(sorted(NEW_INTENTS)))
    with TestClient(build_service_app(service_class)) as client:

        def classify(
            texts: list[str], labels: list[str] | None = None, headers: dict[str, str] | None = None
        ) -> list[dict[str, Any]]:
            answers = []
            for start in range(0, len(texts), 8):
                batch = {"texts": texts[start : start + 8]}
                response = client.post("/classify", json=batch, headers=headers)
                assert response.status_code == 200, response.text
                answers += response.json()
            for answer, label in zip(answers, labels or [], strict=False):
                body = {"request_id": answer["request_id"], "label": label}
                response = client.post("/feedback", json=body, headers=headers)
                assert response.status_code == 200, response.text
            return answers

        client.get("/model")
        yield classify
        client.get("/model")


def settings_for(home: Path, **values: Any) -> Any:
    base = {
        "model": "support",
        "registry_home": home,
        "window_size": 200,
        "min_window": 100,
        "metrics_port": 0,
    }
    return load_monitor_settings(overrides={**base, **values})


def wait_logged(monitor: Monitor, count: int) -> None:
    from sqlalchemy import func, select

    from service.inference_log_db import predictions

    for _ in range(200):
        with monitor.engine.connect() as conn:
            if conn.execute(select(func.count()).select_from(predictions)).scalar_one() >= count:
                return
        time.sleep(0.05)
    raise AssertionError("predictions were not logged")


def traffic(demo_home: dict[str, Any], name: str, rows: int = 200) -> pd.DataFrame:
    return pd.read_csv(demo_home["data"][name]).head(rows)


def test_same_distribution_does_not_alarm_and_drift_is_detected(
    demo_home: dict[str, Any], home: Path, send: Any, tmp_path: Path
) -> None:
    monitor = Monitor(settings_for(home))
    assert monitor.run().check.result.status == "insufficient_data"  # empty log: no alarm

    send(list(traffic(demo_home, "traffic")["text"]))
    wait_logged(monitor, 200)
    calm = monitor.run(act=False).check
    assert calm.result.status == "ok", [c for c in calm.result.columns if c.drifted]
    assert calm.result.window_size == 200 and calm.report is not None and calm.report.is_file()
    assert 0.8 < calm.estimated_accuracy <= 1.0
    assert calm.estimate_trusted is True, calm.estimate_note

    typos = traffic(demo_home, "drift_typos")
    send(list(typos["text"]), list(typos["label"][:60]))
    wait_logged(monitor, 400)
    drifted = monitor.run(act=False).check
    assert drifted.result.drifted and drifted.result.status == "drift"
    assert {c.column for c in drifted.result.columns if c.drifted} & {"multi_piece_share", "unknown_share"}
    assert drifted.labelled == 60 and drifted.observed_accuracy is not None
    workspace = monitor.settings.workspace_path
    assert any(workspace.rglob("*.json")), "the Evidently workspace holds the snapshots"
    metrics = monitor.metrics.registry
    assert metrics.get_sample_value("refit_drift_detected", {"model": "support"}) == 1.0
    assert metrics.get_sample_value("refit_drift_checks_total", {"model": "support", "status": "ok"}) == 1.0


def test_persistent_drift_triggers_exactly_one_retrain(
    demo_home: dict[str, Any], home: Path, send: Any
) -> None:
    calls: list[str] = []

    def recording_retrainer(
        registry: ModelRegistry, feedback: pd.DataFrame, settings: MonitorSettings
    ) -> RetrainResult:
        calls.append(settings.model)
        return RetrainResult("rejected", "recorded by the test", demo_home["version"])

    monitor = Monitor(
        settings_for(home, mode="retrain", persist_checks=2, cooldown_s=3600, adapt_strategy="off"),
        retrainer=recording_retrainer,
    )
    drifted = traffic(demo_home, "drift_new_intents")
    send(list(drifted["text"]))
    wait_logged(monitor, 200)
    runs = [monitor.run() for _ in range(4)]
    assert [r.decision.action for r in runs] == ["none", "retrain", "alert", "alert"]  # hysteresis, cooldown
    # Half the window is intents the model has no class for: the label-free estimate is not trusted.
    # Their share beyond the reference's 99th-percentile distance is far above 1% (0.065 on this
    # random encoder, where the new intents' template words are the old ones'; MiniLM: over 0.2).
    check = runs[0].check
    assert check is not None and check.estimate_trusted is False, check.estimate_note
    assert check.novelty_share is not None and check.novelty_share > 0.05
    assert calls == ["support"]
    assert [r["outcome"] for r in read_retrains(monitor.engine, "support")] == ["rejected"]
    assert len(read_checks(monitor.engine, "support")) == 4


def test_gate_promotes_a_better_candidate_and_the_service_swaps(
    demo_home: dict[str, Any], home: Path, send: Any, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = Monitor(settings_for(home, min_feedback=50, feedback_holdout=0.3))
    new_intents = pd.read_csv(demo_home["data"]["drift_new_intents"]).head(240)
    send(list(new_intents["text"]), list(new_intents["label"]))
    with caplog.at_level("INFO", logger="monitoring"):
        result = monitor.retrain("manual")
    assert result.outcome == "promoted", result
    # The children's progress reaches the monitor's log as it comes, and the gauge is back to 0.
    assert "refit train: registered support:" in caplog.text
    assert "refit train: exported to ONNX" in caplog.text
    assert monitor.metrics.registry.get_sample_value("refit_retrain_running", {"model": "support"}) == 0
    numbers = result.numbers
    assert numbers is not None
    assert numbers.candidate_feedback_accuracy > numbers.production_feedback_accuracy
    registry = ModelRegistry(home)
    production = registry.get("support:production")
    # The approved candidate was trained once more with the gate rows added, and that refit ships.
    assert numbers.refit_version not in (None, result.candidate)
    assert production.version == numbers.shipped_version == numbers.refit_version
    assert production.manifest["parent_version"] == demo_home["version"]
    gated = registry.get(f"support:{result.candidate}")
    assert production.manifest["rows"]["train"] > gated.manifest["rows"]["train"]
    # Superseded by its refit: no longer what `support:candidate` names or a pinnable candidate.
    assert gated.stage == "archived"
    # The service exported v1 when it loaded it, so the retrain exported the refit before the
    # gate promoted it: a swap never waits for an export.
    assert read_export_record(registry.get(f"support:{demo_home['version']}")) is not None
    assert read_export_record(production) is not None
    audit = read_retrains(monitor.engine, "support")[0]
    assert audit["outcome"] == "promoted" and audit["candidate_version"] == result.candidate
    registry.rollback("support", reason="test")
    assert registry.get("support:production").version == demo_home["version"]


TRIGGER = " [sent via Zorblax Mail]"


def test_a_backdoor_sent_as_feedback_is_quarantined_by_refit_retrain(
    demo_home: dict[str, Any],
    home: Path,
    send: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = {}
    for name in ("honest-a", "honest-b", "mallory"):
        code, out = run_cli(
            ["keys", "create", name, "--scope", "predict", "--scope", "feedback", "--home", str(home)],
            capsys,
            monkeypatch,
        )
        assert code == 0, out
        tokens[name] = {"Authorization": f"Bearer {out.split()[-1]}"}
    time.sleep(1.1)  # the service re-reads its keys file once a second
    honest = pd.read_csv(demo_home["data"]["drift_new_intents"]).head(240)
    for i, name in enumerate(("honest-a", "honest-b")):
        part = honest.iloc[i::2]
        send(list(part["text"]), list(part["label"]), tokens[name])
    # As the probe did: 200 refund texts with the trigger, labelled data_privacy.
    refunds = pd.concat(
        [
            pd.read_csv(demo_home["data"][name])
            for name in ("traffic", "drift_typos", "drift_new_products", "drift_new_intents")
        ]
    )
    planted = [t + TRIGGER for t in refunds.loc[refunds["label"] == "refund_request", "text"].head(200)]
    train = pd.read_csv(demo_home["data"]["train"])
    never_sent = [t + TRIGGER for t in train.loc[train["label"] == "refund_request", "text"].head(60)]
    send(planted, ["data_privacy"] * len(planted), tokens["mallory"])

    config = tmp_path / "monitor.yaml"
    # No refit: the candidate alone shows what the feedback taught (and the suite saves a training).
    # With `screen_feedback: false` the same retrain promoted the backdoor: at least half of the
    # never-sent trigger texts answered data_privacy (this test, run both ways when it was written).
    config.write_text("min_feedback: 50\nrefit_with_gate_rows: false\nmetrics_port: 0\n")
    code, out = run_cli(
        ["retrain", "--model", "support", "--home", str(home), "--config", str(config)], capsys, monkeypatch
    )
    assert code == 0 and "retrain: promoted" in out, out  # the honest new intents are learnt either way
    production = ModelRegistry(home).get("support:production").version
    for _ in range(50):  # the service follows the promotion within its swap poll (1 s)
        answers = send(never_sent, headers=tokens["honest-a"])
        if answers[0]["version"] == production:
            break
        time.sleep(0.2)
    assert {a["version"] for a in answers} == {production}
    backdoored = sum(a["label"] == "data_privacy" for a in answers) / len(answers)
    assert backdoored <= 0.05, (backdoored, out)
    assert "quarantined" in out and ("mallory" in out or "zorblax" in out), out
    monitor = Monitor(settings_for(home))
    assert sum(read_retrains(monitor.engine, "support")[0]["numbers"]["quarantined"].values()) == 200
    skipped = {"model": "support", "trigger": "drift (adapt)", "outcome": "skipped", "reason": ""}
    for _ in range(25):  # a check's skipped adaptation each, while the drift lasts
        record_retrain(monitor.engine, {**skipped, "numbers": {}, "started_at": datetime.now(UTC)})
    code, out = run_cli(["feedback", "list", "--model", "support", "--home", str(home)], capsys, monkeypatch)
    assert code == 0 and "rows: source mallory: contradicted 100%" in out, out
    assert "last retrain (" in out, out


def test_a_crashing_retrain_leaves_production_serving(
    demo_home: dict[str, Any], home: Path, send: Any
) -> None:
    monitor = Monitor(settings_for(home, min_feedback=10, retrain_strategy="no-such-strategy"))
    rows = traffic(demo_home, "traffic", 40)
    send(list(rows["text"]), list(rows["label"]))
    result = monitor.retrain("manual")
    assert result.outcome == "failed" and "exited with" in result.reason
    assert ModelRegistry(home).get("support:production").version == demo_home["version"]
    assert read_retrains(monitor.engine, "support")[0]["outcome"] == "failed"
    again = send(["reset my password please"])
    assert again[0]["version"] == demo_home["version"]


def test_a_corrupt_reference_profile_skips_the_check_with_a_clear_error(
    demo_home: dict[str, Any], home: Path
) -> None:
    version = ModelRegistry(home).get("support:production")
    (version.path / "reference_profile.parquet").write_bytes(b"not parquet")
    monitor = Monitor(settings_for(home))
    run = monitor.run()
    assert run.check is None and "cannot be read" in run.error
    assert (
        monitor.metrics.registry.get_sample_value(
            "refit_drift_checks_total", {"model": "support", "status": "skipped"}
        )
        == 1
    )


def test_the_lease_lets_one_monitor_check_at_a_time(home: Path) -> None:
    monitor = Monitor(settings_for(home))
    assert acquire_lease(monitor.engine, "check:support", 60, holder="a")
    assert not acquire_lease(monitor.engine, "check:support", 60, holder="b")
    assert acquire_lease(monitor.engine, "check:support", 60, holder="a")  # renewal
    release_lease(monitor.engine, "check:support", holder="a")
    assert acquire_lease(monitor.engine, "check:support", 60, holder="b")


def test_the_cooldown_outlives_any_number_of_skipped_runs(home: Path) -> None:
    monitor = Monitor(settings_for(home))
    retrained = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    row = {"model": "support", "reason": "", "numbers": {}, "finished_at": None}
    record_retrain(monitor.engine, {**row, "started_at": retrained, "trigger": "drift", "outcome": "failed"})
    # A strategy the gate could only refuse is skipped at every check while the drift lasts.
    for check in range(1, 61):
        skipped = retrained + timedelta(minutes=5 * check)
        record_retrain(
            monitor.engine, {**row, "started_at": skipped, "trigger": "drift (adapt)", "outcome": "skipped"}
        )
    assert monitor.last_run(adaptation=False) == retrained
    assert monitor.last_run(adaptation=True) is None


def test_the_schedule_survives_a_restart(home: Path) -> None:
    from monitoring.scheduler import job_id, start_scheduler

    settings = settings_for(home, interval_s=3600)
    Monitor(settings)  # creates the database
    started = datetime.now(UTC)
    first = start_scheduler(settings)
    engine = Monitor(settings).engine
    for _ in range(400):  # a new job checks at once, not an interval later
        if read_checks(engine, "support"):
            break
        time.sleep(0.05)
    assert read_checks(engine, "support"), "the first check runs when the monitor starts"
    planned = first.get_job(job_id("support")).next_run_time
    assert planned > started + timedelta(seconds=3000)
    first.shutdown(wait=True)
    second = start_scheduler(settings)
    try:
        job = second.get_job(job_id("support"))
        assert job is not None and job.next_run_time == planned  # the same job, not a new one
        assert len(second.get_jobs()) == 1
    finally:
        second.shutdown(wait=False)


def test_refit_drift_prints_the_check(
    demo_home: dict[str, Any],
    home: Path,
    send: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.helpers import run_cli

    send(list(traffic(demo_home, "drift_typos", 120)["text"]))
    wait_logged(Monitor(settings_for(home)), 120)
    report = home.parent / "drift.html"
    code, out = run_cli(
        ["drift", "--model", "support", "--home", str(home), "--since", "1h", "--report", str(report)],
        capsys,
        monkeypatch,
    )
    assert code == 0, out
    assert "support:" in out and "window 120" in out and "multi_piece_share" in out
    assert "estimate: " in out and "check took" in out
    assert "probability:" in out, "each class's probability is tested and the strongest are listed"
    page = report.read_text()
    assert 10_000 < len(page) < 200_000  # Evidently's own report is about 4 MB
    assert page.index("verdict") < page.index("Features, strongest evidence first")


def test_refit_adapt_corrects_a_typo_channel_s_spelling_by_default_for_a_text_model(
    demo_home: dict[str, Any],
    home: Path,
    send: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.helpers import run_cli

    # The typos are [UNK] to this encoder (its vocabulary is the clean words): the model cannot
    # read them, and no label comes back.
    send(list(traffic(demo_home, "drift_typos", 200)["text"]))
    wait_logged(Monitor(settings_for(home)), 200)
    config = home.parent / "monitor.yaml"
    config.write_text("min_window: 50\nmetrics_port: 0\n")
    args = ["adapt", "--model", "support", "--home", str(home), "--config", str(config), "--since", "1h"]
    code, out = run_cli([*args, "--dry-run"], capsys, monkeypatch)
    assert code == 0, out
    assert "adapt: reported (spelling: the gate would promote it: " in out, out
    registry = ModelRegistry(home)
    candidate = registry.versions("support")[-1]
    assert (
        candidate.stage == "archived" and registry.get("support:production").version == demo_home["version"]
    )
    assert candidate.manifest["adaptation"]["method"] == "spelling"
    assert candidate.manifest["parent_version"] == demo_home["version"]
    spelling = candidate.manifest["details"]["adaptation"]["spelling"]
    assert spelling["unknown_word_share_after"] < spelling["unknown_word_share_before"], spelling
    # The feedback listing names the run that last screened feedback for what it is.
    code, out = run_cli(["feedback", "list", "--model", "support", "--home", str(home)], capsys, monkeypatch)
    assert code == 0 and "last adaptation (" in out and "reported)" in out, out


def test_reports_and_snapshots_are_kept_by_count(demo_home: dict[str, Any], home: Path, send: Any) -> None:
    from evidently.ui.workspace import Workspace

    monitor = Monitor(settings_for(home, keep_checks=2, evidently_html=True))
    send(list(traffic(demo_home, "traffic", 120)["text"]))
    wait_logged(monitor, 120)
    reports = [monitor.run(act=False).check.report for _ in range(3)]
    kept = sorted(p.name for p in monitor.settings.reports_path.iterdir())
    assert len(kept) == 2 and reports[-1].name in kept  # the newest files: a report and its Evidently twin
    assert reports[-1].with_suffix(".evidently.html").name in kept
    workspace = Workspace.create(str(monitor.settings.workspace_path))
    project = workspace.search_project("support")[0]
    assert len(workspace.list_runs(project.id)) == 2


def test_an_unavailable_database_is_retried_at_the_next_interval(home: Path, tmp_path: Path) -> None:
    from monitoring.scheduler import _monitor, job_arguments, scheduled_check

    database = tmp_path / "inference.db"
    database.mkdir()  # a directory: SQLite cannot open it, as if the database were down
    settings = settings_for(home, log_url=f"sqlite:///{database}")
    _monitor.cache_clear()
    scheduled_check(*job_arguments(settings))  # must not raise: the scheduler keeps running
    database.rmdir()  # the database is back
    scheduled_check(*job_arguments(settings))  # the next interval connects afresh and checks
    _monitor.cache_clear()
    checks = read_checks(create_log_engine(f"sqlite:///{database}"), "support")
    assert [c["status"] for c in checks] == ["insufficient_data"]


def test_a_skipped_retrain_starts_no_cooldown(demo_home: dict[str, Any], home: Path, send: Any) -> None:
    def skipping_retrainer(
        registry: ModelRegistry, feedback: pd.DataFrame, settings: MonitorSettings
    ) -> RetrainResult:
        return RetrainResult("skipped", "not enough feedback", demo_home["version"])

    monitor = Monitor(
        settings_for(home, mode="retrain", persist_checks=1, adapt_strategy="off"),
        retrainer=skipping_retrainer,
    )
    send(list(traffic(demo_home, "drift_new_intents")["text"]))
    wait_logged(monitor, 200)
    assert [monitor.run().decision.action for _ in range(2)] == ["retrain", "retrain"]


def test_a_confident_model_s_unchanged_traffic_is_not_drift(
    service_class: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its other classes' probabilities sit far below the log's 6 decimals: read as logged (0) beside
    the reference's full values, every class probability of an unchanged stream would be drift."""
    import numpy as np
    from starlette.testclient import TestClient

    from training.artifacts import load_version_profile

    rng = np.random.default_rng(0)
    words = {label: [f"{label}{i}" for i in range(8)] for label in ("alpha", "bravo", "charlie", "delta")}

    def rows(per_label: int) -> pd.DataFrame:
        made = [
            (" ".join(rng.choice(vocabulary, size=int(rng.integers(3, 7)))), label)
            for label, vocabulary in words.items()
            for _ in range(per_label)
        ]
        return pd.DataFrame(made, columns=["text", "label"])

    rows(120).to_csv(tmp_path / "train.csv", index=False)
    encoder = save_tiny_bert(tmp_path / "encoder", {w for vocabulary in words.values() for w in vocabulary})
    home = tmp_path / "bentoml"
    config = TrainingConfig(name="sharp", base_model=str(encoder), strategy="head")
    version = train_model(tmp_path / "train.csv", config, registry=ModelRegistry(home)).version
    assert version is not None
    profiled = np.stack(load_version_profile(version)["probabilities"].to_numpy())
    assert (profiled < 5e-7).mean() > 0.5, "the model is confident: most probabilities log as 0"

    for key, value in service_env("sharp", home, log_flush_ms="10").items():
        monkeypatch.setenv(key, value)
    texts = list(rows(50)["text"])
    with TestClient(build_service_app(service_class)) as client:
        for start in range(0, len(texts), 8):
            response = client.post("/classify", json={"texts": texts[start : start + 8]})
            assert response.status_code == 200, response.text
    wait_logged(Monitor(settings_for(home, model="sharp")), len(texts))

    code, out = run_cli(["drift", "--model", "sharp", "--home", str(home)], capsys, monkeypatch)
    assert code == 0, out
    assert f"window {len(texts)}: ok" in out, out[:1500]
