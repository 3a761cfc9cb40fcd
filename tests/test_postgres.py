"""Two service replicas and the monitor on one real PostgreSQL: the multi-machine layout on loopback.

Both replicas log predictions to it, feedback sent to either is stored (also for a request the
other replica served), the monitor reads both replicas' predictions and feedback and records its
check there, its scheduler keeps its job there, and a promotion is picked up by both replicas.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.processes import LoopbackProcess, start_service
from monitoring.history import read_checks, read_feedback, read_window
from monitoring.monitor import Monitor
from monitoring.scheduler import job_id, start_scheduler
from monitoring.settings import load_monitor_settings
from tests.helpers import SERVICE_LIMITS, tiny_rows
from tests.servers import postgres_server
from training.registry import ModelRegistry

pytestmark = pytest.mark.slow  # a real PostgreSQL server and two service replicas


@pytest.fixture(scope="module")
def cluster(served_home_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """PostgreSQL, a shared registry, and two `bentoml serve` replicas started together."""
    root = tmp_path_factory.mktemp("pg-cluster")
    home = root / "bentoml"
    shutil.copytree(served_home_template, home)
    with postgres_server() as url:
        env = {
            **SERVICE_LIMITS,
            "BENTOML_HOME": str(home),
            "REFIT_SERVE_MODEL": "tiny",
            "REFIT_SERVE_REGISTRY_HOME": str(home),
            "REFIT_SERVE_LOG_URL": url,
            "REFIT_SERVE_SWAP_POLL_S": "0.5",
            "REFIT_SERVE_LOG_FLUSH_MS": "20",
            "REFIT_SERVE_THREADS": "1",
        }
        # Started together on purpose: both create the log's tables at once.
        replicas: list[LoopbackProcess] = [start_service(env, root / f"replica{i}.log") for i in (1, 2)]
        try:
            for replica in replicas:
                replica.wait_ready()
            yield {"url": url, "home": home, "replicas": [r.url for r in replicas]}
        finally:
            for replica in replicas:
                replica.stop()


def classify(url: str, text: str) -> dict[str, Any]:
    response = httpx.post(f"{url}/classify", json={"texts": [text]}, timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json()[0])


def test_both_replicas_log_and_store_feedback_and_the_monitor_reads_both(cluster: dict[str, Any]) -> None:
    one, two = cluster["replicas"]
    texts = list(tiny_rows(copies=4)["text"])
    answers = {url: [classify(url, text) for text in texts] for url in (one, two)}
    # Feedback to the replica that did not serve the request: the shared log finds it anyway.
    crossed = [(two, answers[one][0]), (one, answers[two][0])]
    for url, answer in crossed:
        response = httpx.post(
            f"{url}/feedback", json={"request_id": answer["request_id"], "label": "refund"}, timeout=30
        )
        assert response.status_code == 200, response.text

    settings = load_monitor_settings(
        overrides={
            "model": "tiny", "registry_home": cluster["home"], "log_url": cluster["url"],
            "window_size": 1000, "min_window": 10, "metrics_port": 0,
        }
    )  # fmt: skip
    monitor = Monitor(settings)
    version = ModelRegistry(cluster["home"]).get("tiny:production").version
    served = {a["request_id"] for batch in answers.values() for a in batch}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # records are written off the request path
        window = read_window(monitor.engine, "tiny", version, 1000)
        if served <= set(window["request_id"]):
            break
        time.sleep(0.2)
    assert served <= set(window["request_id"]), "predictions of a replica are missing from the log"

    stored = read_feedback(monitor.engine, "tiny")
    assert {a["request_id"] for _, a in crossed} <= set(stored["request_id"])
    assert set(stored["predicted_label"].dropna()) >= {crossed[0][1]["label"]}

    run = monitor.run(act=False)
    assert run.check is not None and run.check.result.window_size >= len(served)
    assert read_checks(monitor.engine, "tiny")[0]["version"] == version

    scheduler = start_scheduler(settings)
    try:
        assert scheduler.get_job(job_id("tiny")) is not None  # kept in PostgreSQL's job table
    finally:
        scheduler.shutdown(wait=False)


def test_a_promotion_is_picked_up_by_both_replicas(cluster: dict[str, Any]) -> None:
    registry = ModelRegistry(cluster["home"])
    candidate = next(v for v in registry.versions("tiny") if v.stage != "production")
    registry.promote(candidate.tag, reason="test: both replicas follow")
    deadline = time.monotonic() + 10
    pending = set(cluster["replicas"])
    while pending and time.monotonic() < deadline:
        pending = {url for url in pending if classify(url, "refund please")["version"] != candidate.version}
        time.sleep(0.2)
    assert not pending, f"still on the old version after 10 s: {pending}"
