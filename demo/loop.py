"""`refit demo` (`make demo`): the whole loop on generated data, on loopback, in a few minutes.

Train v1 -> serve it -> replay in-distribution traffic with some feedback -> replay drifted
traffic (new intents and typos) -> the monitor process sees the drift, retrains, the gate promotes
v2 -> the service swaps while the traffic goes on -> summary -> everything stopped. With
`--images` the drift comes in two phases: a darker light while no labels come back (the monitor
adapts v1 to it without labels), then a new defect type with labels (it retrains on them). Exits 0
only if the loop closed: a version promoted by the monitor answered requests, each drifted phase
saw a new version, and no request failed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from demo.kinds import TEXT_DEMO, DemoKind
from demo.processes import LoopbackProcess, start_evidently_ui, start_monitor, start_service
from demo.summary import DemoOutcome, render_summary
from demo.traffic import Traffic, TrafficStats, choose_feedback, send_traffic
from demo.training import DemoVersion, train_demo_version
from monitoring.history import create_monitor_tables, read_checks, read_retrains
from monitoring.settings import MonitorSettings
from service.inference_log_db import create_log_engine
from service.keys import create_key
from service.settings import ServeSettings
from training.console import step

MARKER = ".refit-demo"
DEMO_ENTRIES = {MARKER, "bentoml", "data", "logs", "summary.json"}


@dataclass(frozen=True)
class DemoPlan:
    """The demo's pace and the monitor's settings for it (small windows, a short interval)."""

    # At 50 requests/s and a check every 5 s the loops closed in 126 s (text) and 112 s (images) on
    # 2 cores, against 141 and 151 s at 25 and 10 s: the drift is seen sooner, and the retrain, under
    # twice the serving load, trains more slowly (the text demo's candidate and refit 64 s against 50).
    rate: float = 50.0  # requests per second from the replay clients
    concurrency: int = 4  # client threads: several requests in flight, so batches form
    feedback_share: float = 0.3  # rows whose true label is sent back
    check_interval_s: float = 5.0  # the monitor's schedule
    window_size: int = 300
    min_window: int = 150
    min_feedback: int = 40
    swap_timeout_s: float = 360.0  # drifted traffic runs at most this long waiting for v2
    after_swap: int = 100  # requests answered by v2 before the traffic stops
    seed: int = 0


def prepare_directory(out: Path) -> None:
    """Empty ``out`` if a demo made it; refuse any other non-empty directory.

    A demo directory has the marker file, or holds nothing but entries the demo writes, which are
    safe to delete.

    Raises:
        SystemExit: ``out`` holds files the demo did not write.
    """
    if out.exists() and any(out.iterdir()):
        entries = {entry.name for entry in out.iterdir()}
        if MARKER not in entries and not entries <= DEMO_ENTRIES:
            raise SystemExit(
                f"{out} is not empty and was not made by `refit demo` (found {sorted(entries)[:5]}); "
                "choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by refit demo; emptied at the start of each run\n")


def demo_paths(home: Path) -> MonitorSettings:
    """The log URL and Evidently workspace the project derives from ``home`` (no environment read).

    The demo pins both in its children's environment, so a ``REFIT_*_LOG_URL`` of the caller's
    shell cannot split the service, the monitor and the demo's own reads across two databases.
    """
    return MonitorSettings.model_construct(registry_home=home)


def service_env(home: Path, kind: DemoKind = TEXT_DEMO) -> dict[str, str]:
    """``REFIT_SERVE_*`` for the demo's service: feedback may name the labels about to appear."""
    return {
        "BENTOML_HOME": str(home),
        "REFIT_SERVE_MODEL": kind.model,
        "REFIT_SERVE_REGISTRY_HOME": str(home),
        "REFIT_SERVE_LOG_URL": demo_paths(home).resolved_log_url,
        "REFIT_SERVE_FEEDBACK_EXTRA_LABELS": json.dumps(list(kind.new_labels)),
    }


def monitor_env(home: Path, plan: DemoPlan, kind: DemoKind = TEXT_DEMO) -> dict[str, str]:
    """``REFIT_MONITOR_*`` for the demo's monitor: mode retrain, a check every few seconds."""
    return {
        "BENTOML_HOME": str(home),
        "REFIT_MONITOR_MODEL": kind.model,
        "REFIT_MONITOR_REGISTRY_HOME": str(home),
        "REFIT_MONITOR_LOG_URL": demo_paths(home).resolved_log_url,
        "REFIT_MONITOR_WORKSPACE": str(demo_paths(home).workspace_path),
        "REFIT_MONITOR_MODE": "retrain",
        "REFIT_MONITOR_INTERVAL_S": str(plan.check_interval_s),
        "REFIT_MONITOR_WINDOW_SIZE": str(plan.window_size),
        "REFIT_MONITOR_MIN_WINDOW": str(plan.min_window),
        "REFIT_MONITOR_MIN_FEEDBACK": str(plan.min_feedback),
        "REFIT_MONITOR_PERSIST_CHECKS": "2",
        "REFIT_MONITOR_COOLDOWN_S": "3600",  # one retrain per demo
        "REFIT_MONITOR_RETRAIN_TIMEOUT_S": "300",
        **kind.monitor,
    }


class LoopWatcher:
    """Reads the monitor's tables while traffic flows, for the progress line and the summary."""

    def __init__(self, home: Path, model: str) -> None:
        self.engine = create_log_engine(demo_paths(home).resolved_log_url)
        self.model = model
        create_monitor_tables(self.engine)

    def checks(self) -> list[dict[str, Any]]:
        """The checks so far, oldest first."""
        return list(reversed(read_checks(self.engine, self.model, limit=1000)))

    def retrains(self) -> list[dict[str, Any]]:
        """The retrain decisions so far, oldest first."""
        return list(reversed(read_retrains(self.engine, self.model, limit=1000)))

    def describe(self) -> str:
        """'checks: ok ok drift drift | retrain: promoted' for the progress bar."""
        statuses = " ".join(c["status"].replace("insufficient_data", "wait") for c in self.checks()[-6:])
        retrains = self.retrains()
        retrain = retrains[-1]["outcome"] if retrains else "-"
        return f"checks: {statuses or '-'} | retrain: {retrain}"


def run_traffic(
    console: Console,
    url: str,
    rows: pd.DataFrame,
    plan: DemoPlan,
    watcher: LoopWatcher,
    title: str,
    stats: TrafficStats | None = None,
    until: Callable[[TrafficStats], bool] | None = None,
    repeat: bool = False,
    headers: dict[str, str] | None = None,
) -> TrafficStats:
    """Replay ``rows`` with a progress bar whose text follows the monitor's checks."""
    labelled = choose_feedback(len(rows), plan.feedback_share, plan.seed)
    columns = [TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    columns.append(TextColumn("{task.fields[loop]}"))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(title, total=None if repeat else len(rows), loop="")
        done = threading.Event()

        def follow() -> None:
            while not done.wait(1.0):
                progress.update(task, loop=watcher.describe())

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        try:
            stats = send_traffic(
                url,
                Traffic(list(rows["input"]), list(rows["label"]), labelled),
                rate=plan.rate,
                concurrency=plan.concurrency,
                stats=stats,
                on_answer=lambda _: progress.advance(task),
                until=until,
                repeat=repeat,
                headers=headers,
            )
        finally:
            done.set()
            follower.join()
        progress.update(task, loop=watcher.describe())
    return stats


def wait_for_full_check(watcher: LoopWatcher, timeout: float) -> None:
    """Block until the monitor has checked a full window (a status other than
    ``insufficient_data``), or ``timeout`` passes: the calm traffic's verdict comes before the drift,
    however slowly the checks ran."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(check["status"] != "insufficient_data" for check in watcher.checks()):
            return
        time.sleep(0.5)


@dataclass
class DemoRun:
    """A finished loop whose processes still run: what it found and where they listen."""

    outcome: DemoOutcome
    service: LoopbackProcess
    monitor: LoopbackProcess
    ui: LoopbackProcess


@contextlib.contextmanager
def loop_demo(
    out: Path,
    console: Console,
    plan: DemoPlan | None = None,
    on_started: Callable[[LoopbackProcess, LoopbackProcess], None] | None = None,
    kind: DemoKind = TEXT_DEMO,
) -> Iterator[DemoRun]:
    """Run the whole loop under ``out``; yield while its processes still run; stop them on exit.

    Args:
        out: the demo's working directory (emptied first if an earlier demo made it).
        console: where progress and the summary go.
        plan: pace and monitor settings.
        on_started: called with the service and the monitor once both are ready, before any
            traffic (to point a Prometheus at them, say).
        kind: the text demo or the image demo.
    """
    plan = plan or DemoPlan()
    start = time.monotonic()
    # The service and the monitor run in the project root, not in the caller's folder: every path
    # their environment names must hold from there.
    out = out.absolute()
    prepare_directory(out)
    total = 5 + len(kind.phases)
    trained = train_demo_version(out, console, steps=f"1/{total} 2/{total}", kind=kind)
    home = trained.registry.home
    headers = demo_key(home)  # before the service starts: it never serves without a key
    processes: list[LoopbackProcess] = []
    try:
        with step(console, f"3/{total} starting the service, the monitor and the Evidently UI"):
            server, monitor, ui = start_processes(out, home, plan, processes, kind)
            console.print(
                f"    service {server.url} (v1 {trained.version.version}); "
                f"monitor metrics {monitor.url}/metrics"
            )
            if on_started is not None:
                on_started(server, monitor)
        outcome = run_phases(out, console, trained, server.url, plan, headers, kind)
        outcome.urls = {
            "service API docs": f"{server.url}/",
            "service metrics": f"{server.url}/metrics",
            "monitor metrics": f"{monitor.url}/metrics",
            "Evidently UI": ui.url,
        }
        outcome.seconds = time.monotonic() - start
        with step(console, f"{total}/{total} summary"):
            render_summary(outcome, console)
            (out / "summary.json").write_text(json.dumps(outcome.to_json(), indent=2, default=str) + "\n")
        yield DemoRun(outcome=outcome, service=server, monitor=monitor, ui=ui)
    finally:
        for process in reversed(processes):
            process.stop()
        console.print(f"stopped {len(processes)} processes (logs in {out / 'logs'})")


def demo_key(home: Path) -> dict[str, str]:
    """The header of a new API key for the demo's traffic: predictions and feedback, nothing else."""
    path = ServeSettings.model_construct(registry_home=home).api_keys_path
    return {"Authorization": f"Bearer {create_key(path, 'demo-traffic', ['predict', 'feedback'])}"}


def run_phases(
    out: Path,
    console: Console,
    trained: DemoVersion,
    url: str,
    plan: DemoPlan,
    headers: dict[str, str],
    kind: DemoKind = TEXT_DEMO,
) -> DemoOutcome:
    """Calm traffic, then drifted traffic until v2 has answered ``plan.after_swap`` requests.

    The outcome's ``urls`` and ``seconds`` are left for the caller, who started the processes.
    """
    home, v1 = trained.registry.home, trained.version.version
    watcher = LoopWatcher(home, kind.model)
    total = 5 + len(kind.phases)
    with step(console, f"4/{total} in-distribution traffic (30% with feedback labels)"):
        calm_rows = kind.rows(trained.paths["traffic"])
        calm = run_traffic(console, url, calm_rows, plan, watcher, "calm   ", headers=headers)
        wait_for_full_check(watcher, timeout=plan.check_interval_s * 4)
    onset = time.monotonic()
    drifted: dict[str, TrafficStats] = {}
    serving = v1
    for number, phase in enumerate(kind.phases, start=5):
        with step(console, f"{number}/{total} drifted traffic ({phase.what}) until a new version serves"):
            rows = kind.phase_rows(phase, trained.paths, plan.seed)
            share = plan.feedback_share if phase.feedback else 0.0
            stats = run_traffic(
                console,
                url,
                rows,
                replace(plan, feedback_share=share),
                watcher,
                "drifted",
                until=_until_replaced(serving, plan, time.monotonic()),
                repeat=True,
                headers=headers,
            )
        drifted[phase.name] = stats
        serving = stats.answers[-1].version if stats.answers else serving
    return DemoOutcome.collect(
        out=out,
        registry=trained.registry,
        model=kind.model,
        first=v1,
        calm=calm,
        drifted=drifted,
        checks=watcher.checks(),
        retrains=watcher.retrains(),
        onset=onset,
        urls={},
        workspace=demo_paths(home).workspace_path,
        seconds=0.0,
    )


def _until_replaced(serving: str, plan: DemoPlan, start: float) -> Callable[[TrafficStats], bool]:
    """When a phase's traffic stops: another version than ``serving`` answered ``plan.after_swap``
    requests, or ``plan.swap_timeout_s`` passed."""

    def replaced(stats: TrafficStats) -> bool:
        new = stats.answered_by_others(serving)
        return new >= plan.after_swap or time.monotonic() - start > plan.swap_timeout_s

    return replaced


def start_processes(
    out: Path, home: Path, plan: DemoPlan, started: list[LoopbackProcess], kind: DemoKind = TEXT_DEMO
) -> tuple[LoopbackProcess, LoopbackProcess, LoopbackProcess]:
    """Start the service, the monitor and the Evidently UI, each ready before the next starts.

    Each is appended to ``started`` as soon as it runs, so the caller stops it whatever happens next.
    """
    server = start_service(service_env(home, kind), out / "logs" / "service.log")
    started.append(server)
    server.wait_ready()
    monitor = start_monitor(monitor_env(home, plan, kind), out / "logs" / "monitor.log")
    started.append(monitor)
    monitor.wait_ready()
    ui = start_evidently_ui(demo_paths(home).workspace_path, out / "logs" / "evidently-ui.log")
    started.append(ui)
    ui.wait_ready(timeout=60)
    return server, monitor, ui


def run_loop_demo(
    out: Path, console: Console, plan: DemoPlan | None = None, keep: bool = False, kind: DemoKind = TEXT_DEMO
) -> int:
    """`refit demo`: the loop, then stop everything; returns 0 only if the loop closed.

    Args:
        out: the demo's working directory.
        console: where progress and the summary go.
        plan: pace and monitor settings.
        keep: leave the service, monitor and Evidently UI running until Ctrl-C.
        kind: the text demo, or the image demo (`refit demo --images`).
    """
    with loop_demo(out, console, plan, kind=kind) as run:
        if keep:
            console.print("[bold]still running; press Ctrl-C to stop[/]")
            _wait_for_interrupt()
    return 0 if run.outcome.closed else 1


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
