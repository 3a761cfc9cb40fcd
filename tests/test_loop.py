"""The whole loop, as `make demo` runs it, and the real components around it.

One run of the demo (the real MiniLM, the `auto` ladder, `bentoml serve`, `refit monitor`, the
Evidently UI) is held open while Prometheus scrapes it, the dashboard's and the alert rules'
metric names are checked against its live scrapes, and headless Chromium renders the Evidently
project dashboard. Its v1 is also the suite's check of the real MiniLM's ladder and ONNX export.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from rich.console import Console

from demo.loop import DemoRun, loop_demo
from tests.servers import chromium, prometheus_server
from training.artifacts import read_metrics
from training.onnx_files import read_export_record
from training.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\b((?:refit|bentoml)_[a-zA-Z0-9_:]+)")

pytestmark = [pytest.mark.slow, pytest.mark.demo]  # the whole demo loop: training, three processes, minutes


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """One full demo run; its service, monitor and Evidently UI stay up for the module."""
    out = tmp_path_factory.mktemp("loop") / "demo"
    with (out.parent / "demo.log").open("w") as log, loop_demo(out, Console(file=log, width=140)) as run:
        yield run


def scraped_names(url: str) -> set[str]:
    """Every metric name a /metrics page exposes (sample names and HELP/TYPE family names)."""
    names = set()
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def referenced_names() -> dict[str, set[str]]:
    """Metric names in each Grafana panel query and each alert rule expression, by where they are."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "refit.json").read_text())
    found: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.setdefault(f"panel {panel['title']!r}", set()).update(METRIC.findall(target["expr"]))
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found[f"alert {rule['alert']}"] = set(METRIC.findall(rule["expr"]))
    return found


def test_the_loop_closes(demo: DemoRun) -> None:
    outcome = demo.outcome
    assert outcome.closed, outcome.problems
    summary = json.loads((outcome.out / "summary.json").read_text())
    assert summary["closed"] and summary["production_version"] != summary["first_version"]
    assert sum(phase["failed"] for phase in summary["traffic"].values()) == 0
    statuses = [c["status"] for c in summary["checks"]]
    assert "ok" in statuses and "drift" in statuses, statuses
    assert statuses.index("ok") < statuses.index("drift")  # calm first, then the drift
    [promoted] = [r for r in summary["retrains"] if r["outcome"] == "promoted"]
    assert promoted["numbers"]["shipped_version"] == summary["production_version"]
    by_version = summary["traffic"]["drifted"]["accuracy_by_version"]
    assert by_version[summary["production_version"]] > by_version[summary["first_version"]]
    for check in summary["checks"]:
        if check["report"]:
            assert Path(check["report"]).is_file()
    for name, url in outcome.urls.items():
        assert httpx.get(url, timeout=10).status_code == 200, name


def test_v1_is_the_real_minilm_its_ladder_beat_the_baseline_and_its_export_matches(demo: DemoRun) -> None:
    """The bundled all-MiniLM-L6-v2 trained by the `auto` ladder (baseline -> head) on the demo's
    tickets, as `make demo` trains it: head beats the frozen baseline on the test split, and the
    ONNX export answers as torch does."""
    v1 = ModelRegistry(demo.outcome.out / "bentoml").get(f"support-tickets:{demo.outcome.first}")
    assert v1.manifest["base_model"] == "minilm"
    metrics = read_metrics(v1)
    baseline, head = metrics["ladder"]
    assert (baseline["strategy"], head["strategy"]) == ("baseline", "head")
    assert head["test_macro_f1"] > baseline["test_macro_f1"]
    test_accuracy = metrics["test"]["accuracy"]
    assert test_accuracy > 0.9
    record = read_export_record(v1)
    assert record is not None and record["parity_max_abs_diff"] <= 1e-4
    assert record["accuracy"] == pytest.approx(test_accuracy, abs=0.005)


def test_dashboard_and_alerts_use_only_exported_metrics(demo: DemoRun) -> None:
    exported = scraped_names(demo.service.url) | scraped_names(demo.monitor.url)
    missing = {where: names - exported for where, names in referenced_names().items() if names - exported}
    assert not missing, f"not exported by the running system: {missing}"
    assert sum(len(names) for names in referenced_names().values()) > 30


def test_prometheus_scrapes_the_service_and_the_monitor(demo: DemoRun, tmp_path: Path) -> None:
    targets = {
        "refit-service": demo.service.url.removeprefix("http://"),
        "refit-monitor": demo.monitor.url.removeprefix("http://"),
    }
    with prometheus_server(targets, DEPLOY / "prometheus" / "alerts.yml", tmp_path) as url:
        queries = {
            "requests": 'sum(bentoml_service_request_total{endpoint="/classify"})',
            "drift share": "max(refit_drift_share)",
            "retrains": 'sum(refit_retrain_runs_total{outcome="promoted"})',
        }
        values: dict[str, float] = {}
        deadline = time.monotonic() + 30
        while len(values) < len(queries) and time.monotonic() < deadline:
            for name, query in queries.items():
                result = httpx.get(f"{url}/api/v1/query", params={"query": query}).json()["data"]["result"]
                if result:
                    values[name] = float(result[0]["value"][1])
            time.sleep(1)
        assert values.keys() == queries.keys(), (
            f"Prometheus has no value for {queries.keys() - values.keys()}"
        )
        assert values["requests"] >= demo.outcome.phases["in-distribution"].sent
        assert values["retrains"] == 1
        assert 0 <= values["drift share"] <= 1
        rules = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"]
        health = {r["name"]: r["health"] for g in rules for r in g["rules"]}
        written = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
        expected = {rule["alert"] for group in written["groups"] for rule in group["rules"]}
        assert set(health) == expected and set(health.values()) <= {"ok", "unknown"}, health


def test_the_evidently_ui_renders_the_project_dashboard(demo: DemoRun, tmp_path: Path) -> None:
    # The UI reads the workspace the running monitor writes to: one local run got a 500 from
    # this call (nothing logged) and the next run none, so a failed answer is asked again.
    for _ in range(3):
        answer = httpx.get(f"{demo.ui.url}/api/projects", timeout=10)
        if answer.status_code == 200:
            break
        time.sleep(2)
    assert answer.status_code == 200, answer.text
    [project] = answer.json()
    assert project["name"] == "support-tickets"
    assert "DO_NOT_TRACK" in psutil.Process(demo.ui.process.pid).environ()  # Evidently reports use otherwise
    page = f"{demo.ui.url}/projects/{project['id']}"
    dom = chromium(page, "--dump-dom")
    assert "Share of drifted features" in dom and "Per-feature drift p-values" in dom
    checked = [c["checked_at"] for c in demo.outcome.checks if c["status"] in ("ok", "drift")]
    assert dom.count("<circle") >= len(checked), "the panels have no data points"
    screenshot = tmp_path / "evidently-dashboard.png"
    chromium(page, f"--screenshot={screenshot}", "--window-size=1400,1000")
    assert screenshot.stat().st_size > 20_000
