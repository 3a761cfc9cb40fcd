"""Re-fine-tuning in a subprocess, and the promotion gate that decides whether the result ships.

The candidate trains on the production version's own training data plus the feedback-labelled
live data (minus a held-out part), with the production version's config (its strategy and base
model) unless configured otherwise. It runs as `refit train` in a child process with a time
limit, so a crash or an out-of-memory kill cannot take the monitor down. The gate compares the
candidate with production on (1) the original held-out test split and (2) the held-out feedback:
it promotes only if (2) improves and (1) drops by no more than the tolerance.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from training.artifacts import CONFIG_FILE, load_version_model, read_json, read_labels, read_split
from training.cli_support import refit_command
from training.data import normalize_text
from training.inference import predict
from training.onnx_export import read_export_record
from training.registry import ModelRegistry, ModelVersion

logger = logging.getLogger(__name__)


@dataclass
class RetrainResult:
    """What a retrain did and the numbers behind the decision."""

    outcome: str  # promoted, rejected, failed, skipped
    reason: str
    production: str | None
    candidate: str | None = None
    numbers: dict[str, Any] = field(default_factory=dict)


def split_feedback(feedback: pd.DataFrame, holdout: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training part, gate part) of the feedback: one row per text (the latest label wins).

    A row's side is fixed by a hash of its text, not drawn anew at each retrain: otherwise the
    gate of a later retrain would hold rows that the production version was trained on, and
    production would win the comparison on rows it had learnt.
    """
    rows = feedback.dropna(subset=["text", "label"]).drop_duplicates("text", keep="last")[["text", "label"]]
    in_gate = rows["text"].map(lambda text: stable_fraction(normalize_text(str(text))) < holdout)
    return rows[~in_gate].reset_index(drop=True), rows[in_gate].reset_index(drop=True)


def stable_fraction(text: str) -> float:
    """A number in [0, 1) fixed by ``text`` alone (the same in every process and on every run)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def hold_back_rare_new_labels(
    rows: pd.DataFrame, known: list[str], min_examples: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop rows of labels the model does not know yet and that have fewer than ``min_examples``.

    Their rows wait for more feedback (they stay in the log). The default minimum is 1 (no label
    waits): on BANKING77, intents held back until they had 3 rows scored 0 in the promoted
    version, while a single row already counts under class-balanced weights. Raise it when
    feedback is noisy and one mislabelled row should not create a label.
    """
    counts = rows["label"].value_counts()
    rare = {str(k): int(v) for k, v in counts.items() if k not in known and v < min_examples}
    return rows[~rows["label"].isin(rare)].reset_index(drop=True), rare


def accuracies(version: ModelVersion, *frames: pd.DataFrame) -> list[float]:
    """Accuracy of ``version`` on each labelled frame (labels it does not know count as errors).

    The model is loaded once and run once over all frames' texts.
    """
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        return [float("nan")] * len(frames)
    model, tokenizer = load_version_model(version)
    labels = np.array(read_labels(version))
    max_length = int(version.manifest.get("max_length", 128))
    correct = (
        labels[predict(model, tokenizer, list(rows["text"]), max_length=max_length).predicted]
        == rows["label"]
    )
    bounds = np.cumsum([0, *(len(f) for f in frames)])
    return [float(correct[a:b].mean()) if b > a else float("nan") for a, b in itertools.pairwise(bounds)]


def accuracy(version: ModelVersion, frame: pd.DataFrame) -> float:
    """Accuracy of ``version`` on one labelled frame."""
    return accuracies(version, frame)[0]


def train_candidate(
    production: ModelVersion,
    data: pd.DataFrame,
    registry: ModelRegistry,
    *,
    strategy: str | None,
    timeout_s: float,
    workdir: Path,
) -> str:
    """Run `refit train` on ``data`` in a child process; returns the new version.

    Raises:
        RuntimeError: the child failed, timed out, or registered nothing.
    """
    config = dict(read_json(production.path / CONFIG_FILE))
    # The strategy production was built with, not the `auto` it may have been asked for: climbing
    # the whole ladder again would cost minutes and could pick another strategy than the one the
    # gate compares against.
    # The candidate is tested on production's own test split, given as a test file: its registered
    # metrics compare with production's, and none of the (few) feedback rows of a new intent is
    # spent on a second test split.
    data_path, config_path, test_path = (workdir / n for n in ("retrain.csv", "retrain.yaml", "test.csv"))
    read_split(production, "test").to_csv(test_path, index=False)
    config.update(parent_version=production.version, test_file=str(test_path))
    config["strategy"] = strategy or production.manifest.get("strategy", config.get("strategy"))
    data.to_csv(data_path, index=False)
    config_path.write_text(
        yaml.safe_dump({k: v for k, v in config.items() if v is not None}), encoding="utf-8"
    )
    before = {v.version for v in registry.versions(production.name)}
    arguments = ["train", str(data_path), "--config", str(config_path), "--home", str(registry.home)]
    if read_export_record(production) is not None:
        # A service on the ONNX backend would otherwise export the candidate itself when it is
        # promoted: 20+ s of a swap spent on a serving machine (and its parity check) instead of here.
        arguments.append("--export-onnx")
    run_refit(arguments, timeout_s, workdir / "retrain.log")
    new = [v.version for v in registry.versions(production.name) if v.version not in before]
    if not new:
        raise RuntimeError("retraining finished but registered no version")
    return new[-1]


def run_refit(arguments: list[str], timeout_s: float, log_path: Path) -> None:
    """Run one `refit` command in a child process with a time limit, its output to ``log_path``.

    Raises:
        RuntimeError: the child failed or ran past ``timeout_s`` (it is killed).
    """
    with log_path.open("wb") as log:
        try:
            completed = subprocess.run(
                refit_command(*arguments),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"`refit {arguments[0]}` ran past its {timeout_s:.0f} s limit and was killed"
            ) from exc
    if completed.returncode != 0:
        tail = log_path.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"`refit {' '.join(arguments[:2])}` exited with {completed.returncode}: {tail}")


def retrain_and_gate(
    registry: ModelRegistry,
    name: str,
    feedback: pd.DataFrame,
    *,
    holdout: float = 0.3,
    min_feedback: int = 20,
    min_examples: int = 1,
    tolerance: float = 0.01,
    strategy: str | None = None,
    timeout_s: float = 3600.0,
) -> RetrainResult:
    """Retrain ``name`` on its data plus feedback, then promote the candidate only if it is better."""
    production = registry.get(f"{name}:production")
    train_part, gate_part = split_feedback(feedback, holdout)
    if len(train_part) + len(gate_part) < min_feedback:
        reason = f"{len(train_part) + len(gate_part)} feedback labels; at least {min_feedback} needed"
        return RetrainResult("skipped", reason, production.version)
    train_part, held_back = hold_back_rare_new_labels(
        train_part, read_json(production.path / "labels.json"), min_examples
    )
    original = pd.concat(
        [read_split(production, "train"), read_split(production, "validation")], ignore_index=True
    )
    data = pd.concat([original, train_part], ignore_index=True)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="refit-retrain-") as workdir:
            candidate_id = train_candidate(
                production, data, registry, strategy=strategy, timeout_s=timeout_s, workdir=Path(workdir)
            )
    except RuntimeError as exc:
        logger.error("retrain of %s failed; production %s untouched: %s", name, production.version, exc)
        return RetrainResult("failed", str(exc)[:2000], production.version)
    candidate = registry.get(f"{name}:{candidate_id}")
    test = read_split(production, "test")
    production_test, production_feedback = accuracies(production, test, gate_part)
    candidate_test, candidate_feedback = accuracies(candidate, test, gate_part)
    numbers = {
        "production_test_accuracy": production_test,
        "candidate_test_accuracy": candidate_test,
        "production_feedback_accuracy": production_feedback,
        "candidate_feedback_accuracy": candidate_feedback,
        "feedback_train_rows": len(train_part),
        "held_back_labels": held_back,
        "feedback_gate_rows": len(gate_part),
        "train_seconds": round(time.perf_counter() - start, 1),
        "tolerance": tolerance,
    }
    outcome, reason = judge(numbers, tolerance)
    if outcome == "promoted":
        registry.promote(candidate.tag, reason=f"retrain gate: {reason}")
    return RetrainResult(outcome, reason, production.version, candidate.version, numbers)


def judge(numbers: dict[str, Any], tolerance: float) -> tuple[str, str]:
    """The gate: ("promoted" | "rejected", why)."""
    gain = numbers["candidate_feedback_accuracy"] - numbers["production_feedback_accuracy"]
    drop = numbers["production_test_accuracy"] - numbers["candidate_test_accuracy"]
    if np.isnan(gain):
        return "rejected", "no held-out feedback to compare on"
    if gain <= 0:
        return "rejected", f"feedback accuracy did not improve ({gain:+.4f})"
    if drop > tolerance:
        return "rejected", f"test accuracy dropped {drop:.4f} (> tolerance {tolerance})"
    return "promoted", f"feedback accuracy {gain:+.4f}, test accuracy change {-drop:+.4f}"
