"""Open-set answers on BANKING77: can a version say "unknown" to intents it was never trained on?

10 of the 77 intents are held out of training (the unknown ones); a version is trained on the
other 67 with the real pipeline (default config, `head` unless told otherwise). On the official
test split, in-scope rows should keep their label and held-out-intent rows should be flagged.

    python -m benchmarks.open_set --data ../shared/datasets/banking77

Methods, each flagging a text when its score is at or over a threshold:

    refit         what a version ships: uncertainty and distance to the nearest training text
                  (of the sample it serves past `open_set_reference_rows`), standardised and
                  averaged; its threshold chosen at training time on its validation split for
                  <= 2 points of accuracy loss
    msp           1 - the top probability (maximum softmax probability)
    knn_distance  cosine distance to the nearest training text (all of them)

`msp` and `knn_distance` get their thresholds by the same rule on a calibration split (10% of
each known intent's training rows) that the benchmark keeps out of training.

Writes ``benchmarks/results/open_set.json``, rows ``{"method", "in_scope_accuracy",
"oos_recall", "oos_precision", "auroc"}`` (a flagged in-scope row counts as wrong), and
``open_set.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
from rich.console import Console
from sklearn.metrics import roc_auc_score

from benchmarks.arguments import banking77_parser, benchmark_config
from benchmarks.train_banking77 import load_banking77
from monitoring.reference import Encoder
from training.artifacts import load_version_processor, read_split
from training.console import quiet_transformers
from training.data import stratified_split
from training.novelty import nearest_distance
from training.open_set import OpenSet, choose_threshold, load_open_set
from training.pipeline import train_model
from training.probabilities import softmax
from training.registry import ModelRegistry, ModelVersion

console = Console()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = banking77_parser(__doc__, "benchmarks/.open-set-home", "open_set")
    parser.add_argument("--strategy", default="head")
    parser.add_argument("--unknown", type=int, default=10, help="intents held out of training")
    parser.add_argument("--max-loss", type=float, default=0.02, help="accuracy the threshold may cost")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse) the version on the known intents; the calibration and test rows."""
    train, test = load_banking77(args.data)
    rng = np.random.default_rng(args.seed)
    labels = sorted(train["label"].unique())
    unknown = set(rng.choice(labels, size=min(args.unknown, len(labels) // 3), replace=False))
    known = train[~train["label"].isin(unknown)].reset_index(drop=True)
    fit_rows, calibration, _ = stratified_split(known, (0.1, 0.0), args.seed)
    registry = ModelRegistry(args.home)
    name = f"open-set-{args.strategy}"
    if not registry.versions(name):
        data = args.home / f"{name}-train.csv"
        data.parent.mkdir(parents=True, exist_ok=True)
        fit_rows.to_csv(data, index=False)
        in_scope_test = args.home / f"{name}-test.csv"
        test[~test["label"].isin(unknown)].to_csv(in_scope_test, index=False)
        config = benchmark_config(
            args, name, test_file=in_scope_test, abstain_max_accuracy_loss=args.max_loss
        )
        train_model(data, config, registry=registry, console=console)
    return {
        "version": registry.get(f"{name}:production"),
        "calibration": calibration,
        "test": test,
        "unknown": unknown,
    }


def outputs(version: ModelVersion, texts: list[str], what: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, embeddings) of the version on ``texts``."""
    encoder = Encoder(version, load_version_processor(version))
    with console.status(f"embedding {len(texts):,} {what} texts"):
        logits, embeddings = encoder.outputs(texts)
    return softmax(logits), embeddings


def evaluate(
    method: str, scores: np.ndarray, threshold: float, correct: np.ndarray, unknown: np.ndarray
) -> dict[str, Any]:
    """The result row of one method on the test split."""
    flagged = scores >= threshold
    in_scope = ~unknown
    return {
        "method": method,
        "in_scope_accuracy": round(float((correct & ~flagged)[in_scope].mean()), 4),
        "oos_recall": round(float(flagged[unknown].mean()), 4),
        "oos_precision": round(float(unknown[flagged].mean()) if flagged.any() else 0.0, 4),
        "auroc": round(float(roc_auc_score(unknown, scores)), 4),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Train, score the test split with each method, write JSON and markdown; return the rows."""
    logging.basicConfig(level=logging.WARNING)
    quiet_transformers()
    args = parse_args(argv)
    setup = prepare(args)
    version: ModelVersion = setup["version"]
    loaded = load_open_set(version.path)
    if loaded is None:
        raise SystemExit(f"{version.tag} has no open-set calibration (no validation rows?)")
    open_set, reference = loaded
    labels = list(version.manifest["labels"])
    test, calibration = setup["test"], setup["calibration"]
    unknown = test["label"].isin(setup["unknown"]).to_numpy()
    probabilities, embeddings = outputs(version, list(test["text"]), "test")
    index = {label: i for i, label in enumerate(labels)}
    truth = test["label"].map(index).fillna(-1).to_numpy(int)
    correct = probabilities.argmax(axis=1) == truth
    cal_probabilities, cal_embeddings = outputs(version, list(calibration["text"]), "calibration")
    cal_correct = cal_probabilities.argmax(axis=1) == calibration["label"].map(index).to_numpy(int)
    # Every training text, not the sample a version serves past `open_set_reference_rows`.
    _, train_embeddings = outputs(version, list(read_split(version, "train")["text"]), "train")

    def single(signal: str, probs: np.ndarray, embs: np.ndarray) -> np.ndarray:
        return 1.0 - probs.max(axis=1) if signal == "msp" else nearest_distance(embs, train_embeddings)

    rows = [
        evaluate(
            "refit",
            open_set.scores(probabilities, embeddings, reference, unit_reference=True),
            open_set.threshold,
            correct,
            unknown,
        )
    ]
    for method in ("msp", "knn_distance"):
        threshold = choose_threshold(
            single(method, cal_probabilities, cal_embeddings), cal_correct, args.max_loss
        )
        rows.append(evaluate(method, single(method, probabilities, embeddings), threshold, correct, unknown))
    write_results(rows, args, float(correct[~unknown].mean()), open_set, setup, len(test))
    return rows


def write_results(
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    baseline: float,
    open_set: OpenSet,
    setup: dict[str, Any],
    test_rows: int,
) -> None:
    """JSON rows and a markdown table with the loss of in-scope accuracy beside each method."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    unknown = int(setup["test"]["label"].isin(setup["unknown"]).sum())
    train_rows = setup["version"].manifest["rows"]["train"]
    lines = [
        "# Open-set answers on BANKING77: intents held out of training as the unknown ones",
        "",
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; `{args.strategy}` on "
        f"{len(setup['version'].manifest['labels'])} intents ({setup['version'].tag}); test split "
        f"{test_rows:,} rows, {unknown:,} of them from the {len(setup['unknown'])} held-out intents; "
        f"in-scope accuracy without abstaining {baseline:.4f}. Thresholds for <= {args.max_loss:.0%} "
        f"accuracy loss (refit: its validation split, {open_set.validation_rows:,} rows; the others: "
        f"a calibration split of {len(setup['calibration']):,} rows kept out of training). Distances: "
        f"refit's to the {open_set.reference_rows or train_rows:,} training texts it serves "
        f"(`open_set_reference_rows`), knn_distance's to all {train_rows:,}. "
        f"Target: AUROC >= 0.90 and out-of-scope recall >= 0.70 at <= 2 points of loss.",
        "",
        "| method | in-scope accuracy | loss (points) | OOS recall | OOS precision | AUROC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        loss = 100 * (baseline - r["in_scope_accuracy"])
        lines.append(
            f"| {r['method']} | {r['in_scope_accuracy']:.4f} | {loss:.1f} | {r['oos_recall']:.3f} | "
            f"{r['oos_precision']:.3f} | {r['auroc']:.3f} |"
        )
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
