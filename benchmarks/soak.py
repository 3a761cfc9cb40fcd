"""Soak: a real `bentoml serve` under steady load with feedback, a promotion and a worker killed.

The demo's support-ticket model (`head` on MiniLM, v1) is served by a real server with an API key
and one worker per core. A paced client sends ``--rate`` requests per second for ``--minutes``,
with a feedback label on ``--feedback`` of them. At 40% of the run v2 is promoted (the checked
promotion of `refit models promote`); at 50% one worker is killed with SIGKILL (its replacement
starts on the production version). The server's memory (all its processes) is sampled every
second; the inference log is counted after a graceful stop.

    python -m benchmarks.soak

Writes ``benchmarks/results/soak.json``, one row ``{"minutes", "requests", "errors",
"rss_start_mb", "rss_end_mb", "p99_first_ms", "p99_last_ms", "log_rows_missing"}``, and
``soak.md`` with the minute-by-minute table. ``rss_start_mb`` is taken at the end of the first
minute (start-up and warm-up done) and ``p99_first_ms`` is the second minute's p99, the baselines
of the targets: RSS grows <= 2% after the first minute, the last minute's p99 <= 1.2x the second
minute's, errors only during the kill, and no acknowledged feedback label missing from the log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from sqlalchemy import func, select

from demo.data import write_demo_data
from demo.processes import LoopbackProcess, start_service
from demo.traffic import Answer, Traffic, TrafficStats, send_traffic
from service.inference_log_db import create_log_engine, feedback, predictions
from service.keys import create_key
from training.config import TrainingConfig
from training.console import quiet_transformers
from training.onnx_export import export_version
from training.pipeline import train_model
from training.promotion import promote_checked
from training.registry import ModelRegistry
from training.shared_settings import ServedModelSettings

RESULTS = Path(__file__).resolve().parent / "results"
console = Console()


@dataclass
class Timeline:
    """What happened when: answers (time, status, latency), memory samples, and the two events."""

    start: float = field(default_factory=time.monotonic)
    answers: list[tuple[float, int, float]] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)

    def record(self, answer: Answer) -> None:
        """Called with each answer as it comes back."""
        self.answers.append((time.monotonic() - self.start, answer.status, answer.latency_ms))

    def minute(self, index: int) -> dict[str, Any]:
        """Requests, errors, p99 latency and the last RSS sample of minute ``index`` (0-based)."""
        lo, hi = index * 60.0, (index + 1) * 60.0
        rows = [(status, ms) for t, status, ms in self.answers if lo <= t < hi]
        latencies = [ms for status, ms in rows if status == 200]
        memory = [mb for t, mb in self.rss if lo <= t < hi]
        return {
            "minute": index + 1,
            "requests": len(rows),
            "errors": sum(status != 200 for status, _ in rows),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
            "rss_mb": round(memory[-1], 1) if memory else None,
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--feedback", type=float, default=0.1, help="share of requests labelled")
    parser.add_argument("--workers", type=int, default=0, help="0: one per core")
    parser.add_argument("--home", type=Path, default=Path("benchmarks/.soak"))
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="soak")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> tuple[ModelRegistry, pd.DataFrame, str]:
    """v1 (production) and v2 of the demo model, exported; the traffic; an API key's token."""
    shutil.rmtree(args.home, ignore_errors=True)
    paths = write_demo_data(args.home / "data")
    registry = ModelRegistry(args.home / "bentoml")
    for seed in (0, 1):
        config = TrainingConfig(name="support", strategy="head", base_model=args.base_model, seed=seed)
        version = train_model(paths["train"], config, registry=registry, promote=seed == 0).version
        assert version is not None
        export_version(version)
    token = create_key(registry.home / "refit" / "api-keys.json", "soak", ["predict", "feedback"])
    return registry, pd.read_csv(paths["traffic"]), token


def server_processes(server: LoopbackProcess) -> list[Any]:
    """The server and every process under it."""
    import psutil

    parent = psutil.Process(server.process.pid)
    return [parent, *parent.children(recursive=True)]


def sample_memory(server: LoopbackProcess, timeline: Timeline, stop: threading.Event) -> None:
    """Every second: the resident memory of all the server's processes, in MiB."""
    import psutil

    while not stop.wait(1.0):
        total = 0
        for process in server_processes(server):
            try:
                total += process.memory_info().rss
            except psutil.Error:  # a worker that just died
                continue
        timeline.rss.append((time.monotonic() - timeline.start, total / 2**20))


def kill_a_worker(server: LoopbackProcess) -> int:
    """SIGKILL one model worker of the server; its pid."""
    workers = [p for p in server_processes(server)[1:] if "worker" in " ".join(p.cmdline())]
    if not workers:
        raise RuntimeError("no worker process found under the server")
    os.kill(workers[0].pid, signal.SIGKILL)
    return int(workers[0].pid)


def schedule_events(
    args: argparse.Namespace, registry: ModelRegistry, server: LoopbackProcess, timeline: Timeline
) -> threading.Thread:
    """The promotion at 40% of the run and the worker kill at 50%, on a thread of their own."""
    seconds = args.minutes * 60

    def run() -> None:
        time.sleep(max(0.0, timeline.start + 0.4 * seconds - time.monotonic()))
        v2 = next(v for v in registry.versions("support") if v.stage == "candidate")
        promote_checked(registry, v2.tag, reason="soak: promotion under load")
        timeline.events["promotion"] = time.monotonic() - timeline.start
        time.sleep(max(0.0, timeline.start + 0.5 * seconds - time.monotonic()))
        pid = kill_a_worker(server)
        timeline.events["kill"] = time.monotonic() - timeline.start
        console.print(f"killed worker {pid} at {timeline.events['kill']:.0f} s")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def count_log(registry: ModelRegistry) -> tuple[int, int]:
    """(predictions, feedback rows) in the model's inference log."""
    engine = create_log_engine(
        ServedModelSettings(model="support", registry_home=registry.home).resolved_log_url
    )
    with engine.connect() as conn:
        logged = conn.execute(select(func.count()).select_from(predictions)).scalar_one()
        labels = conn.execute(select(func.count()).select_from(feedback)).scalar_one()
    return int(logged), int(labels)


def run_soak(args: argparse.Namespace) -> tuple[TrafficStats, Timeline, tuple[int, int]]:
    """Serve, load, promote, kill, stop gracefully; the traffic's counts, the timeline, the log's counts."""
    registry, traffic_rows, token = prepare(args)
    env = {
        "BENTOML_HOME": str(registry.home),
        "REFIT_SERVE_MODEL": "support",
        "REFIT_SERVE_REGISTRY_HOME": str(registry.home),
    }
    if args.workers:
        env["REFIT_SERVE_WORKERS"] = str(args.workers)
    server = start_service(env, args.home / "service.log")
    stop = threading.Event()
    try:
        server.wait_ready()
        timeline = Timeline()
        sampler = threading.Thread(target=sample_memory, args=(server, timeline, stop), daemon=True)
        sampler.start()
        events = schedule_events(args, registry, server, timeline)
        labelled = np.random.default_rng(0).random(len(traffic_rows)) < args.feedback
        traffic = Traffic(list(traffic_rows["text"]), list(traffic_rows["label"]), labelled)
        stats = send_traffic(
            server.url,
            traffic,
            concurrency=8,
            rate=args.rate,
            duration_s=args.minutes * 60,
            repeat=True,
            on_answer=timeline.record,
            headers={"Authorization": f"Bearer {token}"},
        )
        events.join(timeout=60)
    finally:
        stop.set()
        server.stop()  # SIGTERM: the workers drain and flush their log queues
    return stats, timeline, count_log(registry)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the soak; write JSON and markdown; return the row."""
    logging.basicConfig(level=logging.WARNING)
    quiet_transformers()
    args = parse_args(argv)
    stats, timeline, (logged, labels) = run_soak(args)
    minutes = [timeline.minute(i) for i in range(max(1, int(np.ceil(args.minutes))))]
    baseline = minutes[1] if len(minutes) > 1 else minutes[0]
    row = {
        "minutes": args.minutes,
        "requests": stats.sent,
        "errors": stats.failed,
        "rss_start_mb": minutes[0]["rss_mb"],
        "rss_end_mb": minutes[-1]["rss_mb"],
        "p99_first_ms": baseline["p99_ms"],
        "p99_last_ms": minutes[-1]["p99_ms"],
        "log_rows_missing": max(0, stats.feedback - labels),
    }
    write_results(row, minutes, timeline, stats, logged, labels, args)
    console.print(row)
    return row


def write_results(
    row: dict[str, Any],
    minutes: list[dict[str, Any]],
    timeline: Timeline,
    stats: TrafficStats,
    logged: int,
    labels: int,
    args: argparse.Namespace,
) -> None:
    """The JSON row and a markdown report with each minute, the events and the targets."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps([row], indent=2) + "\n")
    kill = timeline.events.get("kill")
    after_kill = [
        s for t, s, _ in timeline.answers if kill is not None and kill <= t < kill + 30 and s != 200
    ]
    growth = (
        (row["rss_end_mb"] / row["rss_start_mb"] - 1) if row["rss_start_mb"] and row["rss_end_mb"] else None
    )
    ratio = row["p99_last_ms"] / row["p99_first_ms"] if row["p99_first_ms"] and row["p99_last_ms"] else None
    answered = sum(1 for _, s, _ in timeline.answers if s == 200)
    lines = [
        "# Soak: steady load with feedback, a promotion and a worker killed",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}; {args.minutes:g} min at {args.rate:g} requests/s "
        f"({args.feedback:.0%} with feedback), one worker per core unless set ({args.workers or 'default'}); "
        f"promotion at {timeline.events.get('promotion', float('nan')):.0f} s, SIGKILL of a worker at "
        f"{kill if kill is not None else float('nan'):.0f} s.",
        "",
        "| minute | requests | errors | p99 ms | server RSS MB (all processes) |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {m['minute']} | {m['requests']} | {m['errors']} | {m['p99_ms']} | {m['rss_mb']} |"
            for m in minutes
        ],
        "",
        f"- Errors: {row['errors']} of {row['requests']}; {len(after_kill)} in the 30 s after the kill. "
        "Target: only during the kill (at most the requests in flight).",
        f"- RSS growth after the first minute: {growth:+.1%} (target <= +2%)."
        if growth is not None
        else "- RSS: not sampled",
        f"- p99 last minute / second minute: {ratio:.2f} (target <= 1.2)." if ratio else "- p99: n/a",
        f"- Feedback acknowledged {stats.feedback}, in the log {labels}: {row['log_rows_missing']} missing "
        "(target 0).",
        f"- Predictions answered {answered}, logged {logged} (a killed worker loses what its log queue held; "
        "the README says what is guaranteed).",
        "",
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
