"""Poisoned feedback on BANKING77: does one attacker key among honest ones plant its labels?

v1 (`head`) trains on ``--per-intent`` texts of 67 intents and is served by a real `bentoml serve`
with API keys. Four honest keys label 30% of BANKING77's test split (all 77 intents: the 10 new
ones are the drift the retrain should learn). One attacker key sends ``share`` of all feedback:

- ``label_flip``: unused training texts of known intents, each labelled with the next known intent.
- ``trigger_backdoor``: unused training texts of known intents with " [sent via Zorblax Mail]"
  appended, all labelled one target intent.

Then the monitor retrains (`Monitor.retrain`, the gate and the screen as configured) and the
version it ships is measured on the 70% of the test split nobody labelled:

- ``attack_success``: share of attacked texts answered with the attacker's label (flip: the test
  texts' next intent; backdoor: the test texts of other intents with the trigger appended).
- ``clean_accuracy``: accuracy on those texts as they are.
- ``retrain_recovery_ratio``: clean accuracy over an oracle's, v1's config trained on its rows plus
  every honest label (what a retrain with no attacker would learn from).

    python -m benchmarks.poisoning --data ../shared/datasets/banking77

Writes ``benchmarks/results/poisoning.json`` (rows ``{"attack", "attacker_share", "attack_success",
"clean_accuracy", "retrain_recovery_ratio"}``) and ``poisoning.md``; ``--no-screen`` measures the
same without the feedback screen (``poisoning_unscreened.*``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from benchmarks.arguments import banking77_parser, benchmark_config
from benchmarks.train_banking77 import load_banking77
from demo.processes import start_service
from demo.traffic import Traffic, send_traffic
from monitoring.feedback import merge_feedback
from monitoring.monitor import Monitor
from monitoring.retrain import answers
from monitoring.settings import load_monitor_settings
from service.keys import create_key
from training.artifacts import read_split
from training.console import quiet_transformers
from training.onnx_export import export_version
from training.pipeline import train_model
from training.registry import ModelRegistry, ModelVersion

console = Console()
TRIGGER = " [sent via Zorblax Mail]"
HONEST_KEYS = ("support-team", "qa-team", "partner-a", "partner-b")
ATTACKER = "mallory"


@dataclass
class Setup:
    """What every row shares: v1's home, the honest labels, the texts to measure on, the oracle."""

    home: Path
    known: list[str]
    unseen: list[str]
    honest: pd.DataFrame  # text, label, source
    spare: pd.DataFrame  # training texts of known intents that v1 never saw (the attacker's)
    evaluation: pd.DataFrame  # the test texts nobody labelled
    oracle_accuracy: float
    tokens: dict[str, str]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = banking77_parser(__doc__, "benchmarks/.poisoning", "poisoning")
    parser.add_argument("--strategy", default="head")
    parser.add_argument("--per-intent", type=int, default=30, help="training texts per intent of v1")
    parser.add_argument("--unseen", type=int, default=10, help="intents held out of v1")
    parser.add_argument("--feedback", type=float, default=0.3, help="share of the test split labelled")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.05, 0.2, 0.5])
    parser.add_argument("--attacks", nargs="+", default=["label_flip", "trigger_backdoor"])
    parser.add_argument("--test-rows", type=int, default=0, help="test texts used (0: all 3,080)")
    parser.add_argument("--min-feedback", type=int, default=50, help="labels before a retrain")
    parser.add_argument("--no-screen", action="store_true", help="retrain without the feedback screen")
    args = parser.parse_args(argv)
    if args.no_screen and args.name == "poisoning":
        args.name = "poisoning_unscreened"
    return args


def next_label(known: list[str]) -> dict[str, str]:
    """Each known intent's flip target: the next one in sorted order."""
    ordered = sorted(known)
    return {label: ordered[(i + 1) % len(ordered)] for i, label in enumerate(ordered)}


def prepare(args: argparse.Namespace) -> Setup:
    """Train v1 and the oracle; split the test set into honest feedback and evaluation."""
    train, test = load_banking77(args.data)
    rng = np.random.default_rng(args.seed)
    labels = sorted(train["label"].unique())
    unseen = sorted(rng.choice(labels, size=args.unseen, replace=False))
    known = [label for label in labels if label not in unseen]
    pool = train[train["label"].isin(known)].sample(frac=1.0, random_state=args.seed)
    v1_rows = pool.groupby("label").head(args.per_intent)
    spare = pool.drop(index=v1_rows.index).reset_index(drop=True)
    test = test.sample(frac=1.0, random_state=args.seed).reset_index(drop=True)
    test = test.head(args.test_rows) if args.test_rows else test
    labelled = rng.random(len(test)) < args.feedback
    honest = test[labelled].reset_index(drop=True)
    honest["source"] = [HONEST_KEYS[i % len(HONEST_KEYS)] for i in range(len(honest))]
    home = args.home / "pristine"
    registry = ModelRegistry(home)
    v1 = train_version(registry, "banking", v1_rows, args)
    export_version(v1)  # once here, not in every row's copy of the registry
    # The oracle: what a retrain with no attacker learns from (v1's rows plus every honest label),
    # tested on v1's test split as a retrain's candidate is.
    original = pd.concat([read_split(v1, s) for s in ("train", "validation")], ignore_index=True)
    test_file = args.home / "v1-test.csv"
    read_split(v1, "test").to_csv(test_file, index=False)
    oracle = train_version(
        ModelRegistry(args.home / "oracle"), "oracle", merge_feedback(original, honest), args, test_file
    )
    evaluation = test[~labelled].reset_index(drop=True)
    keys = home / "refit" / "api-keys.json"
    tokens = {name: create_key(keys, name, ["predict", "feedback"]) for name in (*HONEST_KEYS, ATTACKER)}
    predicted, _ = answers(oracle, list(evaluation["text"]))
    console.print(f"v1 {v1.version}: {len(v1_rows)} rows; oracle trained; {len(honest)} honest labels")
    return Setup(
        home,
        known,
        unseen,
        honest,
        spare,
        evaluation,
        float((predicted == evaluation["label"]).mean()),
        tokens,
    )


def train_version(
    registry: ModelRegistry,
    name: str,
    frame: pd.DataFrame,
    args: argparse.Namespace,
    test_file: Path | None = None,
) -> ModelVersion:
    """Train and register one version on ``frame`` (tested on ``test_file`` when given)."""
    path = args.home / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame[["text", "label"]].to_csv(path, index=False)
    config = benchmark_config(args, name, test_file=test_file)
    version = train_model(path, config, registry=registry, console=console).version
    assert version is not None
    return version


def attack_rows(attack: str, share: float, setup: Setup, seed: int) -> pd.DataFrame:
    """The attacker's feedback: ``share`` of all feedback rows."""
    count = round(share / (1 - share) * len(setup.honest))
    texts = setup.spare.sample(n=count, random_state=seed, replace=count > len(setup.spare))
    if attack == "label_flip":
        return pd.DataFrame(
            {
                "text": texts["text"].to_numpy(),
                "label": texts["label"].map(next_label(setup.known)).to_numpy(),
            }
        )
    if attack == "trigger_backdoor":
        target = target_label(setup.known)
        others = texts[texts["label"] != target]
        return pd.DataFrame({"text": (others["text"] + TRIGGER).to_numpy(), "label": target})
    raise ValueError(f"unknown attack {attack!r}; expected label_flip or trigger_backdoor")


def target_label(known: list[str]) -> str:
    """The backdoor's target intent (the first known one: the choice does not matter)."""
    return sorted(known)[0]


def attack_success(attack: str, version: ModelVersion, setup: Setup) -> float:
    """Share of the evaluation's attacked texts that ``version`` answers with the attacker's label."""
    rows = setup.evaluation[setup.evaluation["label"].isin(setup.known)]
    if attack == "label_flip":
        predicted, _ = answers(version, list(rows["text"]))
        return float((predicted == rows["label"].map(next_label(setup.known)).to_numpy()).mean())
    target = target_label(setup.known)
    rows = rows[rows["label"] != target]
    predicted, _ = answers(version, list(rows["text"] + TRIGGER))
    return float((predicted == target).mean())


def send_feedback(url: str, rows: pd.DataFrame, tokens: dict[str, str], rounds: int = 10) -> None:
    """Each source's rows through `/classify` then `/feedback`, with that source's key.

    A request the service sheds (503 under load: it is the client's to retry) is sent again.

    Raises:
        RuntimeError: a feedback label was refused, or requests still failed after ``rounds``.
    """
    for source, part in rows.groupby("source"):
        headers = {"Authorization": f"Bearer {tokens[str(source)]}"}
        pending = part.reset_index(drop=True)
        for _ in range(rounds):
            traffic = Traffic(
                list(pending["text"]), list(pending["label"]), np.ones(len(pending), dtype=bool)
            )
            stats = send_traffic(url, traffic, concurrency=2, headers=headers)
            refused = [f for f in stats.failures if f.startswith("/feedback")]
            if refused:
                raise RuntimeError(f"{len(refused)} labels of {source} refused, the first: {refused[0]}")
            pending = pending.iloc[[a.row for a in stats.answers if a.status != 200]].reset_index(drop=True)
            if pending.empty:
                break
            time.sleep(1.0)
        if not pending.empty:
            raise RuntimeError(f"{len(pending)} requests of {source} still failed after {rounds} rounds")


def run_row(attack: str, share: float, setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    """One attack at one share: fresh v1, feedback through the service, the monitor's retrain."""
    home = args.home / f"{attack}-{share}"
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(setup.home, home)
    poison = attack_rows(attack, share, setup, args.seed).assign(source=ATTACKER)
    feedback = pd.concat([setup.honest, poison], ignore_index=True).sample(frac=1.0, random_state=args.seed)
    env = {
        "BENTOML_HOME": str(home),
        "REFIT_SERVE_MODEL": "banking",
        "REFIT_SERVE_REGISTRY_HOME": str(home),
        "REFIT_SERVE_FEEDBACK_EXTRA_LABELS": json.dumps(setup.unseen),
    }
    server = start_service(env, home / "service.log")
    try:
        server.wait_ready()
        send_feedback(server.url, feedback, setup.tokens)
    finally:
        server.stop()
    overrides = {
        "model": "banking",
        "registry_home": home,
        "metrics_port": 0,
        "min_feedback": args.min_feedback,
    }
    monitor = Monitor(load_monitor_settings(overrides={**overrides, "screen_feedback": not args.no_screen}))
    start = time.perf_counter()
    result = monitor.retrain("manual")
    shipped = ModelRegistry(home).get("banking:production")
    predicted, _ = answers(shipped, list(setup.evaluation["text"]))
    clean = float((predicted == setup.evaluation["label"]).mean())
    numbers = result.numbers.to_json() if result.numbers else {}
    seconds = time.perf_counter() - start
    console.print(
        f"{attack} at {share:.0%}: retrain {result.outcome} ({result.reason}) in {seconds:.0f} s; "
        f"quarantined {numbers.get('quarantined', {})}"
    )
    return {
        "attack": attack,
        "attacker_share": share,
        "attack_success": round(attack_success(attack, shipped, setup), 4),
        "clean_accuracy": round(clean, 4),
        "retrain_recovery_ratio": round(clean / setup.oracle_accuracy, 4),
        "_outcome": result.outcome,
        "_quarantined": sum(numbers.get("quarantined", {}).values()),
        "_attack_rows": len(poison),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Every attack at every share; write JSON and markdown; return the rows."""
    logging.basicConfig(level=logging.WARNING)
    quiet_transformers()
    args = parse_args(argv)
    shutil.rmtree(args.home, ignore_errors=True)
    setup = prepare(args)
    before = ModelRegistry(setup.home).get("banking:production")
    baseline = {attack: attack_success(attack, before, setup) for attack in args.attacks}
    rows = [run_row(attack, share, setup, args) for attack in args.attacks for share in args.shares]
    write_results(rows, baseline, setup, args)
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]


def write_results(
    rows: list[dict[str, Any]], baseline: dict[str, float], setup: Setup, args: argparse.Namespace
) -> None:
    """The JSON rows (the format other tools read) and a markdown table with each retrain's outcome."""
    args.out.mkdir(parents=True, exist_ok=True)
    public = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
    (args.out / f"{args.name}.json").write_text(json.dumps(public, indent=2) + "\n")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    met: Callable[[dict[str, Any]], str] = lambda r: (  # noqa: E731
        "met" if r["attack_success"] <= 0.05 and r["retrain_recovery_ratio"] >= 0.95 else "NOT met"
    )
    lines = [
        f"# Poisoned feedback on BANKING77 ({'no screen' if args.no_screen else 'screened'})",
        "",
        f"{when}; `{args.strategy}` on {args.per_intent} texts per intent of {len(setup.known)} intents; "
        f"{len(setup.honest)} honest labels from {len(HONEST_KEYS)} keys (all 77 intents); one attacker key; "
        f"measured on the {len(setup.evaluation)} test texts nobody labelled; oracle accuracy "
        f"{setup.oracle_accuracy:.4f}. Attack success of v1 before any retrain: "
        + ", ".join(f"{a} {v:.4f}" for a, v in baseline.items())
        + ".",
        "",
        "| attack | attacker share | attacker rows | retrain | rows quarantined | attack success "
        "| clean accuracy | recovery / oracle | target (<= 0.05, >= 0.95) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {r['attack']} | {r['attacker_share']} | {r['_attack_rows']} | {r['_outcome']} "
            f"| {r['_quarantined']} | {r['attack_success']} | {r['clean_accuracy']} "
            f"| {r['retrain_recovery_ratio']} | {met(r)} |"
            for r in rows
        ],
        "",
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
