"""The demo's pieces that need no model: its working directory, the load generator's accounting and
when the loop counts as closed."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from demo.loop import MARKER, LoopWatcher, prepare_directory, wait_for_full_check
from demo.processes import free_port
from demo.summary import CALM, DemoOutcome
from demo.traffic import Answer, Traffic, TrafficStats, choose_feedback, send_traffic
from monitoring.history import record_check


def test_a_demo_directory_is_emptied_and_marked(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    (out / "bentoml").mkdir(parents=True)
    (out / "summary.json").write_text("{}")
    prepare_directory(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    (out / "logs").mkdir()
    prepare_directory(out)  # marked: emptied again
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_a_foreign_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(SystemExit, match="not made by `refit demo`"):
        prepare_directory(tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_every_row_that_gets_no_answer_counts_as_a_failure() -> None:
    texts, labels = [f"text {i}" for i in range(12)], ["a"] * 12
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    stats = send_traffic(url, Traffic(texts, labels, np.ones(12, dtype=bool)), rate=200.0, concurrency=3)
    assert stats.sent == 12 and stats.failed == 12 and not stats.versions and stats.feedback == 0
    assert "ClientConnectorError" in stats.failures[0]
    assert sorted(a.row for a in stats.answers) == list(range(12))


def test_traffic_stops_when_told_even_when_repeating() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    stats = send_traffic(
        url, Traffic(["x"]), rate=500.0, concurrency=2, until=lambda s: s.sent >= 20, repeat=True
    )
    assert 20 <= stats.sent <= 21  # the other client finishes the row in hand


def test_free_ports_are_distinct_and_outside_the_range_the_kernel_hands_to_anyone() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if not ephemeral.exists():
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range: not Linux")
    low = int(ephemeral.read_text().split()[0])
    if low <= 10_000:
        pytest.skip(f"the ephemeral range starts at {low}: nothing below it to choose from")
    # BentoML reserves its control sockets by binding port 0; ours must never be among those.
    assert all(10_000 <= port < low for port in ports)


def test_parallel_test_workers_draw_free_ports_from_disjoint_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/proc/sys/net/ipv4/ip_local_port_range").exists():
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range: not Linux")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    for worker in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        assert {free_port() % 3 for _ in range(20)} == {worker}


def test_feedback_needs_the_true_labels() -> None:
    with pytest.raises(ValueError, match="feedback needs the true labels"):
        Traffic(["x"], feedback=np.ones(1, dtype=bool))


def test_feedback_share_is_about_what_was_asked() -> None:
    mask = choose_feedback(10_000, 0.3, seed=1)
    assert 0.28 < mask.mean() < 0.32


def _answered(*versions: str) -> TrafficStats:
    stats = TrafficStats()
    for version in versions:
        stats.answers.append(Answer(row=len(stats.answers), status=200, version=version, label="a"))
        stats.versions[version] += 1
    return stats


def test_the_loop_is_open_while_a_drifted_phase_saw_no_new_version(tmp_path: Path) -> None:
    adapted = {"trigger": "drift (adapt)", "outcome": "promoted", "reason": "ok"}
    outcome = DemoOutcome(
        out=tmp_path,
        first="v1",
        production="v2",
        versions=[],
        checks=[],
        retrains=[adapted],
        phases={CALM: _answered("v1"), "darker light": _answered("v1", "v2"), "new defect": _answered("v2")},
        onset=datetime.now(UTC),
        urls={},
        workspace=tmp_path,
        seconds=1.0,
    )
    assert outcome.find_problems() == ["no new version answered the new defect traffic (only v2)"]
    outcome.phases["new defect"] = _answered("v2", "v3")
    outcome.production = "v3"
    assert outcome.find_problems() == []


def test_the_calm_phase_waits_for_a_check_of_a_full_window_and_no_longer(tmp_path: Path) -> None:
    watcher = LoopWatcher(tmp_path / "home", "support")

    def check(status: str) -> None:
        row = {"checked_at": datetime.now(UTC), "model": "support", "version": "v1", "status": status}
        record_check(watcher.engine, {**row, "drifted": False, "share": 0.0, "window_size": 0, "detail": {}})

    check("insufficient_data")
    start = time.monotonic()
    wait_for_full_check(watcher, timeout=1.0)  # only a window too small so far: waits it out
    assert time.monotonic() - start >= 1.0
    check("insufficient_data")
    threading.Timer(0.5, check, args=("ok",)).start()
    start = time.monotonic()
    wait_for_full_check(watcher, timeout=30.0)
    assert time.monotonic() - start < 5.0  # returned once the full window's check was recorded
