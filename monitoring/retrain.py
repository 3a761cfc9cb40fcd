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
from monitoring.screening import Screened, ScreenRules, cap_sources, screen_feedback, sources_of
from monitoring.settings import MonitorSettings
from training.artifacts import load_version_model, read_labels, read_split, version_images, version_modality
from training.blobs import BlobStore
from training.errors import ModelLoadError
from training.groups import GROUP, is_own_group
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


def answers(version: ModelVersion, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``version``'s label for each text and its probability."""
    if not texts:
        return np.array([], dtype=object), np.array([], dtype=float)
    model, processor = load_version_model(version)
    labels = np.array(read_labels(version), dtype=object)
    probabilities = predict(model, processor, texts).probabilities
    return labels[probabilities.argmax(axis=1)], probabilities.max(axis=1)


def grade(
    predicted: np.ndarray, confidence: np.ndarray, *frames: pd.DataFrame
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per labelled frame, whether each answer (for the frames' rows in order) is the row's label,
    and the probability given to it."""
    correct = predicted == pd.concat(frames, ignore_index=True)["label"].to_numpy()
    bounds = np.cumsum([0, *(len(f) for f in frames)])
    return [(correct[a:b], confidence[a:b]) for a, b in itertools.pairwise(bounds)]


def correct_answers(version: ModelVersion, *frames: pd.DataFrame) -> list[np.ndarray]:
    """Per labelled frame, whether ``version`` answered each row's label (unknown labels: wrong).

    The model is loaded once and run once over all frames' texts.
    """
    rows = pd.concat(frames, ignore_index=True)
    return [correct for correct, _ in grade(*answers(version, list(rows["text"])), *frames)]


def accuracies(version: ModelVersion, *frames: pd.DataFrame) -> list[float]:
    """Accuracy of ``version`` on each labelled frame (labels it does not know count as errors)."""
    return [share(c) for c in correct_answers(version, *frames)]


def share(correct: np.ndarray) -> float:
    """The share of true values; NaN for none."""
    return float(correct.mean()) if len(correct) else float("nan")


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
    original = pd.concat([read_rows(production, s) for s in ("train", "validation")], ignore_index=True)
    feedback = logged_inputs(production, feedback, settings)
    trusted, capped = trust_feedback(production, original, feedback, settings)
    if len(trusted.kept) < settings.min_feedback:
        reason = (
            f"{len(trusted.kept)} feedback labels after quarantine ({len(trusted.quarantined)} rows: "
            f"{'; '.join(trusted.findings) or 'none'}); at least {settings.min_feedback} needed"
        )
        return RetrainResult("skipped", reason, production.version)
    test = read_rows(production, "test")
    data = split_retrain_data(
        original,
        test,
        read_labels(production),
        trusted.kept,
        settings.feedback_holdout,
        settings.min_new_label_examples,
    )
    if len(trusted.kept) - data.test_rows < settings.min_feedback:
        reason = (
            f"{len(trusted.kept) - data.test_rows} feedback labels besides the {data.test_rows} on texts "
            f"of the test split (never trained on); at least {settings.min_feedback} needed"
        )
        return RetrainResult("skipped", reason, production.version)
    start = time.perf_counter()
    refit = settings.refit_with_gate_rows
    try:
        # The refit is the version that ships, so only it needs the ONNX export.
        candidate = _train(registry, production, data.original, data.train, test, settings, export=not refit)
    except RuntimeError as exc:
        logger.error("retrain of %s failed; production untouched: %s", production.tag, exc)
        return RetrainResult("failed", str(exc)[:2000], production.version)
    numbers = measure_gate(production, candidate, test, data, settings)
    numbers.quarantined, numbers.capped = trusted.findings, capped
    decision = judge_candidate(numbers)
    if decision.promoted:
        refit_rows = data.refit
        train_refit = (
            (lambda: _train(registry, production, data.original, refit_rows, test, settings, export=True))
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


def read_rows(version: ModelVersion, split: str) -> pd.DataFrame:
    """A split of ``version`` as ``text`` and ``label`` rows, and ``group`` when it was trained with
    a ``group_column`` (blank for a row that was a group of its own, as a feedback row is); for an
    image version ``text`` is the stored image's file, which is what its model, the screen and the
    gate read."""
    frame = read_split(version, split)
    if version_modality(version) == "image":
        store = version_images(version)
        frame = frame.assign(text=[str(store.path(key)) for key in frame["image"]])
    if GROUP not in frame.columns:
        return frame[["text", "label"]]
    # A row's own group is named by its place in one table; the child names them afresh in its own.
    groups = frame[GROUP].astype(str)
    return frame[["text", "label"]].assign(**{GROUP: groups.where(~is_own_group(groups), "")})


def logged_inputs(version: ModelVersion, feedback: pd.DataFrame, settings: MonitorSettings) -> pd.DataFrame:
    """Feedback whose ``text`` is what the model reads: for an image version, the logged image's
    file (rows whose image is no longer stored are dropped, with a warning)."""
    if version_modality(version) != "image" or feedback.empty:
        return feedback
    store = BlobStore(settings.image_store_path)
    files = [store.path(key) if str(key).startswith("sha256:") else None for key in feedback["text"]]
    kept = np.array([f is not None and f.is_file() for f in files], dtype=bool)
    if not kept.all():
        logger.warning(
            "%d image feedback rows dropped: their images are not in %s", (~kept).sum(), store.root
        )
    return feedback.assign(text=[str(f) for f in files])[kept].reset_index(drop=True)


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
    if shipped is not candidate:  # else `name:candidate` (canaries pin it) would name this stale one
        registry.archive(candidate.tag, reason=f"its refit with the gate rows, {shipped.version}, shipped")
    return shipped


def _train(
    registry: ModelRegistry,
    production: ModelVersion,
    original: pd.DataFrame,
    rows: pd.DataFrame,
    test: pd.DataFrame,
    settings: MonitorSettings,
    export: bool,
) -> ModelVersion:
    """One `refit train` child on production's ``original`` rows merged with feedback ``rows``,
    tested on production's ``test`` split."""
    with tempfile.TemporaryDirectory(prefix="refit-retrain-") as workdir:
        version = train_candidate(
            production,
            merge_feedback(original, rows),
            registry,
            strategy=settings.retrain_strategy,
            timeout_s=settings.retrain_timeout_s,
            workdir=Path(workdir),
            export=export,
            test=test,
        )
    return registry.get(f"{production.name}:{version}")


def trust_feedback(
    production: ModelVersion, original: pd.DataFrame, feedback: pd.DataFrame, settings: MonitorSettings
) -> tuple[Screened, dict[str, int]]:
    """The labelled feedback worth training on: screened against production, one row per text, capped.

    Screening sees every row (before the latest label per text wins), so a poisoned label cannot
    first replace an honest one and then be quarantined with it.
    """
    rows = feedback.dropna(subset=["text", "label"]).reset_index(drop=True)
    rows = rows.assign(source=sources_of(rows))[["text", "label", "source"]]
    if settings.screen_feedback and not rows.empty:
        texts = list(dict.fromkeys(rows["text"]))
        predicted, confidence = answers(production, texts)
        where = {text: i for i, text in enumerate(texts)}
        index = rows["text"].map(where).to_numpy()
        rules = ScreenRules(settings.screen_confidence, settings.screen_min_rows)
        screened = screen_feedback(
            rows, predicted[index], confidence[index], read_labels(production), original["text"], rules
        )
    else:
        screened = Screened(rows, rows.iloc[:0].assign(reason=""))
    for reason, count in screened.findings.items():
        logger.warning("feedback of %s quarantined (%d rows): %s", production.name, count, reason)
    screened.kept, capped = cap_sources(labelled_rows(screened.kept), settings.max_source_share)
    return screened, capped


def measure_gate(
    production: ModelVersion,
    candidate: ModelVersion,
    test: pd.DataFrame,
    data: RetrainData,
    settings: MonitorSettings,
) -> GateNumbers:
    """Both versions' accuracies on production's ``test`` split and on the gate rows, also per source."""
    production_test, production_gate = correct_answers(production, test, data.gate)
    candidate_test, candidate_gate = correct_answers(candidate, test, data.gate)
    sources = sources_of(data.gate).to_numpy()
    per_source = {
        str(source): {
            "rows": int((sources == source).sum()),
            "production": round(share(production_gate[sources == source]), 4),
            "candidate": round(share(candidate_gate[sources == source]), 4),
        }
        for source in sorted(set(sources))
    }
    return GateNumbers(
        production_test_accuracy=share(production_test),
        candidate_test_accuracy=share(candidate_test),
        production_feedback_accuracy=share(production_gate),
        candidate_feedback_accuracy=share(candidate_gate),
        feedback_train_rows=len(data.train),
        feedback_gate_rows=len(data.gate),
        feedback_test_rows=data.test_rows,
        tolerance=settings.gate_tolerance,
        held_back_labels=data.held_back,
        per_source=per_source,
        source_tolerance=settings.source_gate_tolerance,
        source_min_rows=settings.source_gate_min_rows,
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
