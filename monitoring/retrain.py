"""Retraining: feedback split, candidate trained in a child process, gate, refit, promotion.

The candidate trains on the production version's own training data plus the feedback-labelled
live data (minus the gate's share), with the production version's config (its strategy and base
model) unless configured otherwise. Once the gate approves, the same config is trained once more
with the gate's rows added (the refit) and that version ships: on a few labels per new intent, the
30% the gate held out are worth several points of accuracy. Later gates compare only on rows
production never trained on.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring.candidate import train_candidate
from monitoring.feedback import RetrainData, labelled_rows, merge_feedback, split_retrain_data
from monitoring.gate import GateDecision, GateNumbers, judge_candidate, refit_passes
from monitoring.settings import MonitorSettings
from training.artifacts import load_version_model, read_labels, read_split
from training.errors import ModelLoadError
from training.inference import predict
from training.promotion import promote_checked
from training.registry import ModelRegistry, ModelVersion

logger = logging.getLogger(__name__)


@dataclass
class RetrainResult:
    """What a retrain did and the numbers behind the decision."""

    outcome: str  # promoted, rejected, failed, skipped
    reason: str
    production: str | None
    candidate: str | None = None
    numbers: GateNumbers | None = None  # None when no candidate was compared


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
    predicted = predict(model, tokenizer, list(rows["text"]), max_length=max_length).predicted
    correct = labels[predicted] == rows["label"]
    bounds = np.cumsum([0, *(len(f) for f in frames)])
    return [float(correct[a:b].mean()) if b > a else float("nan") for a, b in itertools.pairwise(bounds)]


def accuracy(version: ModelVersion, frame: pd.DataFrame) -> float:
    """Accuracy of ``version`` on one labelled frame."""
    return accuracies(version, frame)[0]


def retrain(registry: ModelRegistry, feedback: pd.DataFrame, settings: MonitorSettings) -> RetrainResult:
    """Retrain ``settings.model`` on its data plus feedback; promote only what passes the gate.

    With ``settings.refit_with_gate_rows``, an approved candidate is trained once more with the
    gate rows added, and that version is promoted instead (the candidate itself when the refit
    fails or loses test accuracy beyond the tolerance).
    """
    production = registry.get(f"{settings.model}:production")
    labelled = len(labelled_rows(feedback))
    if labelled < settings.min_feedback:
        reason = f"{labelled} feedback labels; at least {settings.min_feedback} needed"
        return RetrainResult("skipped", reason, production.version)
    original = pd.concat([read_split(production, s) for s in ("train", "validation")], ignore_index=True)
    data = split_retrain_data(
        original,
        read_labels(production),
        feedback,
        settings.feedback_holdout,
        settings.min_new_label_examples,
    )
    start = time.perf_counter()
    refit = settings.refit_with_gate_rows
    try:
        # The refit is the version that ships, so only it needs the ONNX export.
        candidate = _train(registry, production, data.original, data.train, settings, export=not refit)
    except RuntimeError as exc:
        logger.error("retrain of %s failed; production untouched: %s", production.tag, exc)
        return RetrainResult("failed", str(exc)[:2000], production.version)
    test = read_split(production, "test")
    decision = judge_candidate(measure_gate(production, candidate, test, data, settings.gate_tolerance))
    if decision.promoted:
        refit_rows = data.refit
        train_refit = (
            (lambda: _train(registry, production, data.original, refit_rows, settings, export=True))
            if refit
            else None
        )
        try:
            ship(registry, candidate, test, decision, train_refit)
        except ModelLoadError as exc:  # the approved version does not load: production stays
            logger.error("retrain of %s: %s", production.tag, exc)
            return RetrainResult("failed", str(exc), production.version, candidate.version, decision.numbers)
    else:  # a rejected candidate is no longer a candidate: nobody may pin it
        registry.archive(candidate.tag, reason=f"retrain gate: {decision.reason}")
    decision.numbers.train_seconds = round(time.perf_counter() - start, 1)
    return RetrainResult(
        decision.outcome, decision.reason, production.version, candidate.version, decision.numbers
    )


def ship(
    registry: ModelRegistry,
    candidate: ModelVersion,
    test: pd.DataFrame,
    decision: GateDecision,
    train_refit: Callable[[], ModelVersion] | None,
) -> ModelVersion:
    """Promote the approved candidate, or its refit with the gate rows when ``train_refit`` is given.

    A refit that loses test accuracy beyond the tolerance is archived and the candidate ships.
    """
    shipped = candidate
    if train_refit is not None:
        shipped = ship_refit(train_refit, candidate, test, decision.numbers)
    decision.numbers.shipped_version = shipped.version
    note = "" if shipped is candidate else f"; refit of {candidate.version} with the gate rows added"
    promote_checked(registry, shipped.tag, reason=f"retrain gate: {decision.reason}{note}")
    refit_version = decision.numbers.refit_version
    if refit_version and refit_version != shipped.version:  # below the tolerance: not servable
        registry.archive(f"{candidate.name}:{refit_version}", reason="refit below the gate's tolerance")
    return shipped


def _train(
    registry: ModelRegistry,
    production: ModelVersion,
    original: pd.DataFrame,
    rows: pd.DataFrame,
    settings: MonitorSettings,
    export: bool,
) -> ModelVersion:
    """One `refit train` child on production's ``original`` rows merged with feedback ``rows``."""
    with tempfile.TemporaryDirectory(prefix="refit-retrain-") as workdir:
        version = train_candidate(
            production,
            merge_feedback(original, rows),
            registry,
            strategy=settings.retrain_strategy,
            timeout_s=settings.retrain_timeout_s,
            workdir=Path(workdir),
            export=export,
        )
    return registry.get(f"{production.name}:{version}")


def measure_gate(
    production: ModelVersion, candidate: ModelVersion, test: pd.DataFrame, data: RetrainData, tolerance: float
) -> GateNumbers:
    """Both versions' accuracies on production's ``test`` split and on the gate rows."""
    production_test, production_feedback = accuracies(production, test, data.gate)
    candidate_test, candidate_feedback = accuracies(candidate, test, data.gate)
    return GateNumbers(
        production_test_accuracy=production_test,
        candidate_test_accuracy=candidate_test,
        production_feedback_accuracy=production_feedback,
        candidate_feedback_accuracy=candidate_feedback,
        feedback_train_rows=len(data.train),
        feedback_gate_rows=len(data.gate),
        tolerance=tolerance,
        held_back_labels=data.held_back,
    )


def ship_refit(
    train: Callable[[], ModelVersion], candidate: ModelVersion, test: pd.DataFrame, numbers: GateNumbers
) -> ModelVersion:
    """Train the approved config with the gate rows added; the version to ship.

    Falls back to ``candidate`` when the refit fails or its accuracy on ``test`` (production's
    test split) drops more than the tolerance below production's. ``numbers`` gets
    ``refit_version`` and ``refit_test_accuracy``, or ``refit_error``.
    """
    try:
        refitted = train()
    except RuntimeError as exc:
        logger.warning("refit of %s failed; the gated candidate ships: %s", candidate.tag, exc)
        numbers.refit_error = str(exc)[:500]
        return candidate
    numbers.refit_version = refitted.version
    numbers.refit_test_accuracy = accuracy(refitted, test)
    return refitted if refit_passes(numbers) else candidate
