"""Accuracy without labels: Refit's CBPE estimate against NannyML's CBPE, on the same windows.

The model, the reference and the windows are ``benchmarks/drift_power.py``'s: a `head` model on 67
BANKING77 intents, its reference profile (held-out training rows, with their labels), windows of
test texts under the scenarios ``none``, ``label_mix``, ``unseen_25`` and ``typos``. For each
window the realised accuracy is known (an unseen intent's text is always answered wrongly); each
estimator is fitted on the same reference rows and estimates every window:

    refit    isotonic P(correct | top probability) on the reference, averaged over the window
             (``monitoring.reference``, what each check reports as ``estimated_accuracy``)
    nannyml  NannyML's CBPE (multiclass, accuracy), fitted on the reference, one chunk per window,
             in its own virtualenv (``benchmarks/peers/nannyml``; created on first use)

    python -m benchmarks.accuracy_estimate --data ../shared/datasets/banking77 --trials 200

Writes ``benchmarks/results/accuracy_estimate.json`` (rows: estimator, scenario, window, mae,
trials), ``accuracy_estimate.md`` (the table, the date, the machine, the peer versions, which
peers ran and why not) and ``accuracy_estimate.png`` (mean absolute error per cell).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import Progress

from benchmarks.arguments import banking77_parser
from benchmarks.drift_power import console, prepare, sample_window, window_parts
from benchmarks.peers import PeerUnavailable, peer_version, run_peer
from benchmarks.train_banking77 import describe_environment
from monitoring.reference import Reference
from training.artifacts import load_version_profile
from training.console import quiet_transformers

SCENARIOS = ("none", "label_mix", "unseen_25", "typos")
REFERENCE = "reference"  # the cell of the reference rows themselves, in the markdown only
PEERS = ("nannyml",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = banking77_parser(__doc__, "benchmarks/.drift-home", "accuracy_estimate")
    parser.add_argument("--windows", default="200,1000")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--trials", type=int, default=200, help="windows per cell")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated; '' for Refit alone")
    args = parser.parse_args(argv)
    unknown = sorted({p for p in args.peers.split(",") if p} - set(PEERS))
    if unknown:
        parser.error(f"--peers: unknown {unknown}; expected some of {', '.join(PEERS)}")
    return args


def draw_window(
    scenario: str, size: int, pool: dict[str, Any], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (size, labels), true labels) of one window, in the same order."""
    source, idx = sample_window(scenario, size, pool, rng)
    parts = window_parts(pool, source, idx, rng)
    probabilities = np.concatenate([embedded["probabilities"][rows] for embedded, rows in parts])
    truth = np.concatenate([pool["test"]["label"].to_numpy()[rows] for _, rows in parts])
    return probabilities, truth


def labelled_reference(reference: Reference) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, true labels) of the reference rows both estimators are fitted on."""
    profile = load_version_profile(reference.version)
    labelled = profile[profile["label"].notna()].reset_index(drop=True)
    return np.stack(labelled["probabilities"].to_numpy()), labelled["label"].to_numpy()


def estimate_refit(reference: Reference, probabilities: np.ndarray) -> float:
    """Refit's estimate of a window's accuracy: the mean calibrated P(correct) of its answers."""
    return float(np.mean(reference.estimate_correct(probabilities.max(axis=1))))


def nannyml_frame(probabilities: np.ndarray, truth: np.ndarray | None, labels: list[str]) -> pd.DataFrame:
    """NannyML's input: one probability column per class, ``y_pred`` and (reference) ``y_true``."""
    frame = pd.DataFrame(probabilities.astype(np.float64), columns=[f"p{i}" for i in range(len(labels))])
    frame["y_pred"] = np.asarray(labels, dtype=object)[probabilities.argmax(axis=1)]
    if truth is not None:
        frame["y_true"] = truth
    return frame


def estimate_nannyml(
    reference: Reference, windows: dict[tuple[str, int], list[np.ndarray]], scratch: Path
) -> dict[tuple[str, int], list[float]]:
    """NannyML's CBPE estimates of every window, by cell (one peer run for all of them).

    Raises:
        PeerUnavailable: NannyML's virtualenv could not be created, or its run failed.
    """
    labels = reference.space.labels
    reference_frame = nannyml_frame(*labelled_reference(reference), labels)
    reference_frame.to_parquet(scratch / "reference.parquet")
    analyses = []
    for (scenario, size), batches in windows.items():
        path = scratch / f"{scenario}-{size}.parquet"
        nannyml_frame(np.concatenate(batches), None, labels).to_parquet(path)
        analyses.append({"file": str(path), "chunk_size": size, "cell": [scenario, size]})
    jobs = {
        "reference": str(scratch / "reference.parquet"),
        "classes": {label: f"p{i}" for i, label in enumerate(labels)},
        "analyses": analyses,
    }
    (scratch / "jobs.json").write_text(json.dumps(jobs))
    run_peer("nannyml", "cbpe.py", str(scratch / "jobs.json"), str(scratch / "estimates.json"))
    estimates = json.loads((scratch / "estimates.json").read_text())
    return {(a["cell"][0], a["cell"][1]): estimates[a["file"]] for a in analyses}


def mean_absolute_error(estimates: list[float], realised: list[float]) -> float:
    return round(float(np.mean(np.abs(np.asarray(estimates) - np.asarray(realised)))), 4)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Draw every window, estimate it with each estimator, write JSON, markdown and a plot."""
    logging.basicConfig(level=logging.WARNING)
    quiet_transformers()
    args = parse_args(argv)
    reference, pool = prepare(args)
    rng = np.random.default_rng(args.seed + 2)
    cells = [(s, int(w)) for s in args.scenarios.split(",") for w in args.windows.split(",")]
    windows: dict[tuple[str, int], list[np.ndarray]] = {}
    realised: dict[tuple[str, int], list[float]] = {}
    refit: dict[tuple[str, int], list[float]] = {}
    labels = np.asarray(reference.space.labels, dtype=object)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("windows", total=len(cells) * args.trials)
        for cell in cells:
            for _ in range(args.trials):
                probabilities, truth = draw_window(*cell, pool, rng)
                windows.setdefault(cell, []).append(probabilities)
                answers = labels[probabilities.argmax(axis=1)]
                realised.setdefault(cell, []).append(float(np.mean(answers == truth)))
                refit.setdefault(cell, []).append(estimate_refit(reference, probabilities))
                progress.advance(task)
    # The reference rows themselves as one more window: how right each estimator is on the rows it
    # was fitted on, beside how far the test windows' accuracy is from theirs.
    ref_probabilities, ref_truth = labelled_reference(reference)
    itself = (REFERENCE, len(ref_truth))
    windows[itself] = [ref_probabilities]
    realised[itself] = [float(np.mean(labels[ref_probabilities.argmax(axis=1)] == ref_truth))]
    refit[itself] = [estimate_refit(reference, ref_probabilities)]
    estimates = {"refit": refit}
    ran = {"refit": "Refit (this checkout)"}
    for peer in [p for p in args.peers.split(",") if p]:
        try:
            with (
                tempfile.TemporaryDirectory(prefix="refit-accuracy-") as scratch,
                console.status(f"{peer}: estimating {sum(len(v) for v in windows.values())} windows"),
            ):
                estimates[peer] = estimate_nannyml(reference, windows, Path(scratch))
            ran[peer] = f"NannyML {peer_version(peer, 'nannyml')} (CBPE, multiclass accuracy)"
        except PeerUnavailable as exc:
            ran[peer] = f"did not run: {exc}"
            console.print(f"[yellow]{peer} did not run[/yellow]: {exc}")
    rows = [
        {
            "estimator": estimator,
            "scenario": scenario,
            "window": size,
            "mae": mean_absolute_error(by_cell[(scenario, size)], realised[(scenario, size)]),
            "trials": len(realised[(scenario, size)]),
        }
        for (scenario, size) in cells
        for estimator, by_cell in estimates.items()
    ]
    accuracy = {cell: float(np.mean(values)) for cell, values in realised.items()}
    on_reference = {name: by_cell[itself][0] for name, by_cell in estimates.items() if itself in by_cell}
    write_results(rows, args, ran, accuracy, (itself, on_reference))
    return rows


def write_results(
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    ran: dict[str, str],
    accuracy: dict[tuple[str, int], float],
    on_reference: tuple[tuple[str, int], dict[str, float]],
) -> None:
    """The JSON rows, the markdown table (with who ran), each estimator's estimate of the
    reference rows it was fitted on (``on_reference``: that cell and the estimates) and the plot."""
    itself, estimated = on_reference
    reference_rows = itself[1]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    env = describe_environment()
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    keyed = {(r["estimator"], r["scenario"], r["window"]): r for r in rows}
    lines = [
        "# Accuracy without labels: mean absolute error of the estimate against the realised accuracy",
        "",
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; {env['device']}; torch {env['torch']}. "
        f"Windows of BANKING77 test texts (drift_power's scenarios) answered by a `head` model on 67 "
        f"intents; both estimators fitted on the same {reference_rows:,} reference rows (held-out "
        "training rows with labels). Estimators: "
        + "; ".join(f"`{name}`: {what}" for name, what in ran.items())
        + ".",
        "",
        "| scenario | window | trials | realised accuracy (mean) | "
        + " | ".join(f"MAE {e}" for e in estimators)
        + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in estimators) + " |",
    ]
    for scenario, size in dict.fromkeys((r["scenario"], r["window"]) for r in rows):
        maes = [keyed.get((e, scenario, size)) for e in estimators]
        trials = next(r["trials"] for r in maes if r)
        lines.append(
            f"| {scenario} | {size} | {trials} | {accuracy[(scenario, size)]:.3f} | "
            + " | ".join(f"{r['mae']:.4f}" if r else "" for r in maes)
            + " |"
        )
    undrifted = [accuracy[cell] for cell in accuracy if cell[0] in ("none", "label_mix")]
    lines += [
        "",
        f"On the {reference_rows:,} reference rows themselves (realised accuracy {accuracy[itself]:.4f}), "
        + ", ".join(f"{name} estimates {value:.4f}" for name, value in estimated.items())
        + (
            f"; the undrifted windows' realised accuracy is {min(undrifted):.3f}-{max(undrifted):.3f}."
            if undrifted
            else "."
        ),
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    plot(rows, estimators, args.out / f"{args.name}.png")


def plot(rows: list[dict[str, Any]], estimators: list[str], path: Path) -> None:
    """Grouped bars: each estimator's mean absolute error per scenario and window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys((r["scenario"], r["window"]) for r in rows))
    keyed = {(r["estimator"], r["scenario"], r["window"]): r["mae"] for r in rows}
    width = 0.8 / len(estimators)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(cells)), 3.6))
    for i, estimator in enumerate(estimators):
        values = [keyed.get((estimator, *cell), np.nan) for cell in cells]
        axes.bar(np.arange(len(cells)) + i * width, values, width, label=estimator)
    axes.set_xticks(np.arange(len(cells)) + width * (len(estimators) - 1) / 2)
    axes.set_xticklabels([f"{s}\nw={w}" for s, w in cells], fontsize=8)
    axes.set_ylabel("mean |estimate - realised|")
    axes.set_title("Label-free accuracy estimate: error per scenario and window")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
