"""Recovery from unseen intents: the closed loop (serve, log, check, retrain, gate, swap) on BANKING77.

v1 (`head`) is trained on 67 intents and served by a real `bentoml serve`. Traffic is BANKING77's
test split: first only the 67 known intents, then all 77 (drift onset). A fifth of the drifted
requests get feedback labels. The monitor (mode retrain) checks after every `--check-every`
requests; when drift persists it retrains on the training data plus feedback and the gate decides.

Measured on the drifted requests that got no feedback label: accuracy of v1 (before), of the
version serving at the end (after), and of a model trained offline on all 77 intents (oracle);
and the seconds from drift onset until the promoted version answered a request.

    python -m benchmarks.retrain_recovery --data ../shared/datasets/banking77

Writes ``benchmarks/results/retrain_recovery.json`` ({accuracy_before, accuracy_after,
accuracy_oracle, seconds_to_promotion}) and ``retrain_recovery.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from rich.console import Console

from benchmarks.arguments import benchmark_config
from benchmarks.train_banking77 import load_banking77
from demo.processes import start_service
from demo.traffic import Answer, Traffic, send_traffic
from monitoring.monitor import Monitor
from monitoring.retrain import accuracy
from monitoring.settings import load_monitor_settings
from training.console import quiet_transformers
from training.pipeline import train_model
from training.registry import ModelRegistry

RESULTS = Path(__file__).resolve().parent / "results"
console = Console()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/banking77"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.recovery"))
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text")
    parser.add_argument("--strategy", default="head")
    parser.add_argument("--unseen", type=int, default=10, help="intents held out of v1")
    parser.add_argument("--calm", type=int, default=600, help="requests before the drift onset")
    parser.add_argument(
        "--drifted", type=int, default=0, help="drifted requests (0: the rest of the test split)"
    )
    parser.add_argument("--feedback", type=float, default=0.2, help="share of drifted requests labelled")
    parser.add_argument("--check-every", type=int, default=250, help="requests between checks")
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--min-window", type=int, default=200)
    parser.add_argument("--min-feedback", type=int, default=200, help="labels before a retrain")
    parser.add_argument("--settle-checks", type=int, default=2, help="checks after the traffic ends")
    parser.add_argument("--cooldown", type=float, default=60.0, help="seconds between retrains")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="retrain_recovery")
    return parser.parse_args(argv)


def train_version(registry: ModelRegistry, name: str, frame: pd.DataFrame, args: argparse.Namespace) -> Any:
    """Train and register one version on ``frame``."""
    path = args.work / f"{name}.csv"
    frame.to_csv(path, index=False)
    return train_model(path, benchmark_config(args, name), registry=registry, console=console).version


def stream(url: str, rows: pd.DataFrame, labelled: np.ndarray, on_chunk: Any, every: int) -> None:
    """Send each row as one request (feedback where ``labelled``), calling ``on_chunk`` every ``every``.

    Raises:
        RuntimeError: a request failed (the benchmark measures a loop that drops nothing).
    """

    def count(answer: Answer) -> None:
        if (answer.row + 1) % every == 0:
            on_chunk()

    traffic = Traffic(list(rows["text"]), list(rows["label"]), labelled)
    stats = send_traffic(url, traffic, concurrency=1, on_answer=count)
    if stats.failed:
        raise RuntimeError(f"{stats.failed} requests failed, the first: {stats.failures[0]}")


def promotion_delay(engine: Any, calm: int, first_version: str) -> float | None:
    """Seconds from the first drifted request to the first answer by another version (the log's clock)."""
    from sqlalchemy import select

    from service.inference_log_db import predictions

    query = select(predictions.c.id, predictions.c.version, predictions.c.created).order_by(predictions.c.id)
    with engine.connect() as conn:
        rows = [r for r in conn.execute(query) if r.id > calm]
    new = next((r for r in rows if r.version != first_version), None)
    return round((new.created - rows[0].created).total_seconds(), 1) if new is not None and rows else None


def wait_for_version(url: str, registry: ModelRegistry, timeout: float = 30.0) -> str:
    """The version the service answers with once it has followed the registry's production."""
    wanted = registry.get("banking:production").version
    deadline = time.monotonic() + timeout
    version = ""
    while time.monotonic() < deadline:
        version = httpx.post(f"{url}/classify", json={"texts": ["hello"]}, timeout=30).json()[0]["version"]
        if version == wanted:
            break
        time.sleep(0.2)
    return version


def run_loop(
    args: argparse.Namespace,
    registry: ModelRegistry,
    unseen: list[str],
    calm: pd.DataFrame,
    drifted: pd.DataFrame,
    labelled: np.ndarray,
) -> tuple[Monitor, list[dict[str, Any]], float, str]:
    """Serve v1, stream calm then drifted traffic with checks between; (monitor, timeline, onset, final).

    ``final`` is the version serving once the loop settles.
    """
    home = registry.home
    env = {
        "BENTOML_HOME": str(home),
        "REFIT_SERVE_MODEL": "banking",
        "REFIT_SERVE_REGISTRY_HOME": str(home),
        "REFIT_SERVE_FEEDBACK_EXTRA_LABELS": json.dumps(unseen),
    }
    server = start_service(env, args.work / "service.log")
    settings = load_monitor_settings(
        overrides={
            "model": "banking", "registry_home": home, "mode": "retrain", "window_size": args.window,
            "min_window": args.min_window, "persist_checks": 2, "cooldown_s": args.cooldown,
            "min_feedback": args.min_feedback, "metrics_port": 0,
        }
    )  # fmt: skip
    monitor = Monitor(settings)
    timeline: list[dict[str, Any]] = []

    def check() -> None:
        run = monitor.run()
        entry = {"at": time.monotonic(), "status": run.check.result.status if run.check else "skipped"}
        if run.retrain:
            entry["retrain"] = run.retrain.outcome
            console.print(f"retrain: {run.retrain.outcome} ({run.retrain.reason})")
        timeline.append(entry)

    try:
        server.wait_ready()
        stream(server.url, calm, np.zeros(len(calm), dtype=bool), check, args.check_every)
        onset = time.monotonic()
        stream(server.url, drifted, labelled, check, args.check_every)
        for _ in range(args.settle_checks):  # the monitor keeps its schedule after traffic stops
            check()
        final = wait_for_version(server.url, registry)
    finally:
        server.stop()
    return monitor, timeline, onset, final


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the loop once; write JSON and markdown; return the result."""
    logging.basicConfig(level=logging.WARNING)
    quiet_transformers()
    args = parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    train, test = load_banking77(args.data)
    rng = np.random.default_rng(args.seed)
    unseen = sorted(rng.choice(sorted(train["label"].unique()), size=args.unseen, replace=False))
    home = args.work / "bentoml"
    registry = ModelRegistry(home)
    v1 = train_version(registry, "banking", train[~train["label"].isin(unseen)], args)
    oracle = train_version(ModelRegistry(args.work / "oracle"), "oracle", train, args)

    test = test.sample(frac=1.0, random_state=args.seed).reset_index(drop=True)
    known = test[~test["label"].isin(unseen)]
    calm = known.head(args.calm)
    rest = test.drop(index=calm.index).reset_index(drop=True)
    drifted = rest.head(args.drifted) if args.drifted else rest
    labelled = rng.random(len(drifted)) < args.feedback
    monitor, timeline, onset, final = run_loop(args, registry, unseen, calm, drifted, labelled)
    delay = promotion_delay(monitor.engine, len(calm), v1.version)
    evaluation = drifted[~labelled].reset_index(drop=True)
    result = {
        "accuracy_before": round(accuracy(v1, evaluation), 4),
        "accuracy_after": round(accuracy(registry.get(f"banking:{final}"), evaluation), 4),
        "accuracy_oracle": round(accuracy(oracle, evaluation), 4),
        "seconds_to_promotion": delay,
    }
    write_results(result, args, timeline, onset, len(evaluation))
    console.print(result)
    return result


def write_results(
    result: dict[str, Any], args: argparse.Namespace, timeline: list[dict[str, Any]], onset: float, n: int
) -> None:
    """The JSON object and a markdown summary with the check timeline."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    ratio = (
        result["accuracy_after"] / result["accuracy_oracle"] if result["accuracy_oracle"] else float("nan")
    )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    numbers = [result[k] for k in ("accuracy_before", "accuracy_after", "accuracy_oracle")]
    lines = [
        "# Retrain recovery on BANKING77 (67 known intents, then all 77)",
        "",
        f"{when}; strategy `{args.strategy}`; {args.calm} calm requests, then the drifted ones with "
        f"{args.feedback:.0%} feedback; a check every {args.check_every} requests.",
        "",
        "| accuracy before | accuracy after | oracle | after / oracle | seconds to promotion |",
        "| --- | --- | --- | --- | --- |",
        "| " + " | ".join(str(x) for x in numbers) + f" | {ratio:.3f} | {result['seconds_to_promotion']} |",
        "",
        f"Accuracies on the {n} drifted requests without feedback. Target: after >= 0.95 x oracle: "
        f"{'met' if ratio >= 0.95 else 'NOT met'}.",
        "",
        "Checks (seconds after drift onset: status):",
        "",
        *[
            f"- {entry['at'] - onset:+.0f} s: {entry['status']}"
            + (f", retrain {entry['retrain']}" if "retrain" in entry else "")
            for entry in timeline
        ],
        "",
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
