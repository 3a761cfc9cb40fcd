"""Re-fine-tuning in a subprocess, and the promotion gate that decides whether the result ships.

The candidate trains on the production version's own training data plus the feedback-labelled
live data (minus a held-out part), with the production version's config (its strategy and base
model) unless configured otherwise. It runs as `refit train` in a child process with a time
limit, so a crash or an out-of-memory kill cannot take the monitor down. The gate compares the
candidate with production on (1) the original held-out test split and (2) the held-out feedback:
it promotes only if (2) improves and (1) drops by no more than the tolerance.

Once the gate approves, the same config is trained once more with the gate's rows added (the
refit) and that version ships: on a few labels per new intent, the 30% the gate held out are
worth several points of accuracy. Later gates compare only on rows production never trained on.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
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


def labelled_rows(feedback: pd.DataFrame) -> pd.DataFrame:
    """The feedback's (text, label) rows, one per text: the latest label wins."""
    return feedback.dropna(subset=["text", "label"]).drop_duplicates("text", keep="last")[["text", "label"]]


def split_feedback(feedback: pd.DataFrame, holdout: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training part, gate part) of the feedback: one row per text (the latest label wins).

    A row's side is fixed by a hash of its text, not drawn anew at each retrain: otherwise the
    gate of a later retrain would hold rows that the production version was trained on, and
    production would win the comparison on rows it had learnt.
    """
    rows = labelled_rows(feedback)
    in_gate = normalized_texts(rows).map(stable_fraction) < holdout
    return rows[~in_gate].reset_index(drop=True), rows[in_gate].reset_index(drop=True)


def stable_fraction(text: str) -> float:
    """A number in [0, 1) fixed by ``text`` alone (the same in every process and on every run)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def normalized_texts(frame: pd.DataFrame) -> pd.Series:
    """The ``text`` column as compared for identity (see :func:`training.data.normalize_text`)."""
    return frame["text"].map(lambda text: normalize_text(str(text)))


def merge_feedback(original: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``original`` training rows plus feedback ``rows``; a feedback label replaces any older one.

    A later retrain starts from a version that already holds earlier feedback: without this, each
    retrain would count those rows once more, and a corrected label would sit beside the old one.
    """
    kept = original[~normalized_texts(original).isin(set(normalized_texts(rows)))]
    return pd.concat([kept, rows], ignore_index=True)


def drop_seen_rows(seen: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The ``rows`` whose text is not among the ``seen`` rows (a version's training data).

    A refitted production version has learnt the gate rows of its own retrain; compared on them,
    it would win against any candidate.
    """
    return rows[~normalized_texts(rows).isin(set(normalized_texts(seen)))].reset_index(drop=True)


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
    export: bool = True,
) -> str:
    """Run `refit train` on ``data`` in a child process; returns the new version.

    With ``export``, the child also exports the version to ONNX when production has an export.

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
    if export and read_export_record(production) is not None:
        # A service on the ONNX backend would otherwise export the candidate itself when it is
        # promoted: 20+ s of a swap spent on a serving machine (and its parity check) instead of here.
        arguments.append("--export-onnx")
    run_refit(arguments, timeout_s, workdir / "retrain.log")
    new = [v.version for v in registry.versions(production.name) if v.version not in before]
    if not new:
        raise RuntimeError("retraining finished but registered no version")
    return new[-1]


def run_refit(arguments: list[str], timeout_s: float, log_path: Path) -> None:
    """Run one `refit` command in a child process with a time limit.

    Its output goes to ``log_path`` and, line by line as it comes, to this module's log: a
    retrain started by the monitor shows its progress (embedding, epochs, export) in the
    monitor's own log.

    Raises:
        RuntimeError: the child failed or ran past ``timeout_s`` (it is killed).
    """
    start = time.perf_counter()
    with log_path.open("wb") as log:
        child = subprocess.Popen(refit_command(*arguments), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        relay = threading.Thread(target=_relay, args=(child, log, arguments[0]), daemon=True)
        relay.start()
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            child.kill()
            child.wait()
            raise RuntimeError(
                f"`refit {arguments[0]}` ran past its {timeout_s:.0f} s limit and was killed"
            ) from exc
        finally:
            relay.join(timeout=5)
    logger.info("`refit %s` finished in %.0f s", arguments[0], time.perf_counter() - start)
    if child.returncode != 0:
        tail = log_path.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"`refit {' '.join(arguments[:2])}` exited with {child.returncode}: {tail}")


def _relay(child: subprocess.Popen[bytes], log: Any, command: str) -> None:
    """Copy the child's output to its log file, and each non-empty line to the monitor's log."""
    assert child.stdout is not None
    for raw in child.stdout:
        log.write(raw)
        log.flush()
        line = raw.decode(errors="replace").strip()
        if line:
            logger.info("refit %s: %s", command, line)


@dataclass
class RetrainData:
    """The rows of one retrain: production's own, the feedback for training, and the gate's."""

    original: pd.DataFrame  # production's train and validation splits
    train: pd.DataFrame  # feedback the candidate trains on (rare new labels held back)
    gate: pd.DataFrame  # held-out feedback production never trained on
    refit: pd.DataFrame  # feedback the refit trains on: all of it, rare new labels held back
    held_back: dict[str, int]  # new labels waiting for more rows, with their row counts


def prepare_retrain_data(
    production: ModelVersion, feedback: pd.DataFrame, holdout: float, min_examples: int
) -> RetrainData:
    """Split the feedback for the candidate, the gate and the refit of one retrain."""
    train_part, gate_part = split_feedback(feedback, holdout)
    known = read_labels(production)
    original = pd.concat(
        [read_split(production, "train"), read_split(production, "validation")], ignore_index=True
    )
    gate_part = drop_seen_rows(original, gate_part)
    train_rows, held_back = hold_back_rare_new_labels(train_part, known, min_examples)
    refit_rows, _ = hold_back_rare_new_labels(pd.concat([train_part, gate_part]), known, min_examples)
    return RetrainData(original, train_rows, gate_part, refit_rows, held_back)


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
    refit: bool = True,
) -> RetrainResult:
    """Retrain ``name`` on its data plus feedback, then promote the candidate only if it is better.

    With ``refit``, an approved candidate is trained once more with the gate rows added, and that
    version is promoted instead (the candidate itself when the refit fails or loses accuracy on
    the test split beyond ``tolerance``).
    """
    production = registry.get(f"{name}:production")
    labelled = len(labelled_rows(feedback))
    if labelled < min_feedback:
        return RetrainResult(
            "skipped", f"{labelled} feedback labels; at least {min_feedback} needed", production.version
        )
    data = prepare_retrain_data(production, feedback, holdout, min_examples)
    start = time.perf_counter()

    def train(rows: pd.DataFrame, export: bool) -> str:
        with tempfile.TemporaryDirectory(prefix="refit-retrain-") as workdir:
            return train_candidate(
                production,
                merge_feedback(data.original, rows),
                registry,
                strategy=strategy,
                timeout_s=timeout_s,
                workdir=Path(workdir),
                export=export,
            )

    try:
        # The refit is the version that ships, so only it needs the ONNX export.
        candidate = registry.get(f"{name}:{train(data.train, export=not refit)}")
    except RuntimeError as exc:
        logger.error("retrain of %s failed; production %s untouched: %s", name, production.version, exc)
        return RetrainResult("failed", str(exc)[:2000], production.version)
    test = read_split(production, "test")
    numbers = compare_on_gate(production, candidate, test, data)
    outcome, reason = judge(numbers, tolerance)
    if outcome == "promoted":
        shipped = candidate
        if refit:
            shipped = refit_candidate(
                lambda: train(data.refit, export=True),
                registry,
                candidate,
                numbers["production_test_accuracy"],
                test,
                tolerance,
                numbers,
            )
        numbers["shipped_version"] = shipped.version
        registry.promote(shipped.tag, reason=f"retrain gate: {reason}" + _refit_note(shipped, candidate))
    numbers.update(train_seconds=round(time.perf_counter() - start, 1), tolerance=tolerance)
    return RetrainResult(outcome, reason, production.version, candidate.version, numbers)


def compare_on_gate(
    production: ModelVersion, candidate: ModelVersion, test: pd.DataFrame, data: RetrainData
) -> dict[str, Any]:
    """Both versions' accuracies on the test split and the gate rows, and the rows behind them."""
    production_test, production_feedback = accuracies(production, test, data.gate)
    candidate_test, candidate_feedback = accuracies(candidate, test, data.gate)
    return {
        "production_test_accuracy": production_test,
        "candidate_test_accuracy": candidate_test,
        "production_feedback_accuracy": production_feedback,
        "candidate_feedback_accuracy": candidate_feedback,
        "feedback_train_rows": len(data.train),
        "held_back_labels": data.held_back,
        "feedback_gate_rows": len(data.gate),
    }


def refit_candidate(
    train: Callable[[], str],
    registry: ModelRegistry,
    candidate: ModelVersion,
    production_test: float,
    test: pd.DataFrame,
    tolerance: float,
    numbers: dict[str, Any],
) -> ModelVersion:
    """Train the approved config with the gate rows added; the version to ship.

    Falls back to ``candidate`` when the refit fails or its test accuracy drops more than
    ``tolerance`` below production's (the gate's rule (1), which the refit must pass too).
    ``numbers`` gets ``refit_version`` and ``refit_test_accuracy`` (or ``refit_error``).
    """
    try:
        refitted = registry.get(f"{candidate.name}:{train()}")
    except RuntimeError as exc:
        logger.warning("refit of %s failed; the gated candidate ships: %s", candidate.tag, exc)
        numbers.update(refit_version=None, refit_error=str(exc)[:500])
        return candidate
    refit_test = accuracy(refitted, test)
    numbers.update(refit_version=refitted.version, refit_test_accuracy=refit_test)
    return refitted if production_test - refit_test <= tolerance else candidate


def _refit_note(shipped: ModelVersion, candidate: ModelVersion) -> str:
    if shipped.version == candidate.version:
        return ""
    return f"; refit of {candidate.version} with the gate rows added"


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
