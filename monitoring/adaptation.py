"""Adaptation in the loop: production adapted to a window of live inputs, without labels, gated.

When the inputs drift and fewer than ``min_feedback`` of the window's predictions have labels, a
retrain has little to learn from; the drifted window's inputs themselves are the data. A
candidate is trained in a child `refit train` with an adaptation strategy (``adapt_strategy``, by
default ``self-train`` for images and ``spelling`` for texts) whose target is the window, on
production's own training data and config. The gate
(:func:`monitoring.adaptation_gate.judge_adaptation`) then compares it with production on
production's test split, on whatever feedback labels the window has, and without labels on the
share of the window's inputs held out from the adaptation (``adapt_gate_share``). With
``promote=False`` (``mode: alert``, ``refit adapt --dry-run``) the verdict is reported and the
candidate archived.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.adaptation_gate import (
    count_test_changes,
    judge_adaptation,
    measure_window,
    overconfidence,
    split_window,
    vouched_for,
)
from monitoring.candidate import train_candidate
from monitoring.feedback import drop_seen_rows, labelled_rows
from monitoring.gate import GateNumbers
from monitoring.retrain import RetrainResult, grade, logged_inputs, read_rows, share
from monitoring.settings import MonitorSettings
from training.artifacts import load_version_model, read_labels, version_modality
from training.blobs import BlobStore
from training.config import FINETUNE_STRATEGIES
from training.errors import ModelLoadError
from training.inference import predict
from training.processors import rewritten_inputs
from training.promotion import promote_checked
from training.registry import ModelRegistry, ModelVersion

logger = logging.getLogger(__name__)

DEFAULT_ADAPTATIONS = {"image": "self-train", "text": "spelling"}


def choose_strategy(settings: MonitorSettings, modality: str) -> str | None:
    """The configured adaptation strategy, or the modality's measured default; None when off.

    By default images adapt with ``self-train`` (on the tiles' lighting shifts it recovered the
    most and never lost, over six seeds) and texts with ``spelling`` (on BANKING77's typos
    and chat channel it gained the most, in a fraction of a second)."""
    if settings.adapt_strategy == "off":
        return None
    return settings.adapt_strategy or DEFAULT_ADAPTATIONS[modality]


def base_strategy(production: ModelVersion) -> str:
    """The labelled-data strategy an adaptation of ``production`` starts from: production's own
    (the adapted candidate must compare with it), or the base of production's own adaptation."""
    manifest = production.manifest
    strategy = (manifest.get("adaptation") or {}).get("base_strategy") or manifest.get("strategy")
    return strategy if strategy in ("head", *FINETUNE_STRATEGIES) else "head"


def window_inputs(
    production: ModelVersion, window: pd.DataFrame, settings: MonitorSettings
) -> tuple[list[str], list[str]]:
    """What the model reads for each window row, each once, and the key of each as the log holds
    it: the texts (their own keys), or the logged image files and their content keys (rows whose
    image is no longer stored are left out)."""
    keys = list(dict.fromkeys(str(value) for value in window["text"]))
    if version_modality(production) != "image":
        return keys, keys
    store = BlobStore(settings.image_store_path)
    files = {key: store.path(key) for key in keys if key.startswith("sha256:")}
    stored = [key for key, f in files.items() if f.is_file()]
    return [str(files[key]) for key in stored], stored


def describe_window(settings: MonitorSettings, version: str, window: pd.DataFrame) -> str:
    """The inference-log window an adaptation used, as its lineage names it."""
    created = pd.to_datetime(window["created"])
    return (
        f"{settings.model}:{version} predictions {created.min():%Y-%m-%dT%H:%M:%S} .. "
        f"{created.max():%Y-%m-%dT%H:%M:%S} ({len(window)} rows)"
    )


def adapt(
    registry: ModelRegistry,
    window: pd.DataFrame,
    feedback: pd.DataFrame,
    settings: MonitorSettings,
    *,
    promote: bool = True,
) -> RetrainResult:
    """Adapt production to ``window`` (the inference log's rows) behind the gate.

    ``feedback``: the model's feedback rows; the labelled ones of the window's inputs that
    production did not train on are the gate's only labels. Outcomes: promoted, rejected,
    reported (judged, not promoted), failed, skipped.
    """
    production = registry.get(f"{settings.model}:production")
    strategy = choose_strategy(settings, version_modality(production))
    if strategy is None:
        return RetrainResult("skipped", "adaptation is off (adapt_strategy: off)", production.version)
    inputs, keys = window_inputs(production, window, settings)
    if len(inputs) < settings.min_window:
        reason = f"{len(inputs)} distinct window inputs to adapt to; at least {settings.min_window} needed"
        return RetrainResult("skipped", reason, production.version)
    original = pd.concat([read_rows(production, s) for s in ("train", "validation")], ignore_index=True)
    test = read_rows(production, "test")
    # Labels of the window's own inputs describe the new domain; older feedback is the old domain,
    # which the test split already speaks for (one of 189 calm-light labels lost is no harm).
    on_window = feedback[feedback["text"].astype(str).isin(set(window["text"].astype(str)))]
    labels = drop_seen_rows(original, labelled_rows(logged_inputs(production, on_window, settings)))
    if promote and labels.empty and not vouched_for(strategy, settings.adapt_label_free_strategies):
        # The gate's verdict is certain (monitoring.adaptation_gate.needs_labels): train nothing.
        reason = (
            f"{strategy} ships only on held-out feedback labels that show a gain, and no input of the "
            f"window has a label (adapt_label_free_strategies); --dry-run or mode: alert trains and "
            f"judges it anyway"
        )
        return RetrainResult("skipped", reason, production.version)
    adapted, held_out = split_window(inputs, settings.adapt_gate_share, keys)
    start = time.perf_counter()
    try:
        candidate = _train(registry, production, original, test, adapted, window, strategy, settings)
    except RuntimeError as exc:
        logger.error("adaptation of %s failed; production untouched: %s", production.tag, exc)
        return RetrainResult("failed", str(exc)[:2000], production.version)
    numbers = measure_adaptation(production, candidate, test, labels, held_out, settings)
    numbers.adaptation = strategy
    decision = judge_adaptation(numbers, settings.adapt_label_free_strategies)
    numbers.train_seconds = round(time.perf_counter() - start, 1)
    outcome, reason = decision.outcome, decision.reason
    if decision.promoted and promote:
        try:
            promote_checked(registry, candidate.tag, reason=f"adaptation gate ({strategy}): {reason}")
        except ModelLoadError as exc:
            return RetrainResult("failed", str(exc), production.version, candidate.version, numbers)
        numbers.shipped_version = candidate.version
    else:  # refused, or only reported: nobody may pin it
        verdict = "would promote" if decision.promoted else "refuses"
        registry.archive(candidate.tag, reason=f"adaptation gate {verdict}: {reason}")
        if not promote:
            outcome, reason = "reported", f"the gate {verdict} it: {reason}"
    return RetrainResult(outcome, f"{strategy}: {reason}", production.version, candidate.version, numbers)


def _train(
    registry: ModelRegistry,
    production: ModelVersion,
    original: pd.DataFrame,
    test: pd.DataFrame,
    inputs: list[str],
    window: pd.DataFrame,
    strategy: str,
    settings: MonitorSettings,
) -> ModelVersion:
    """One `refit train` child: ``strategy`` on production's data, adapted to ``inputs``."""
    with tempfile.TemporaryDirectory(prefix="refit-adapt-") as workdir:
        target = Path(workdir) / "target.csv"
        pd.DataFrame({"text": inputs}).to_csv(target, index=False)
        overrides: dict[str, Any] = {
            "target_file": str(target),
            "target_window": describe_window(settings, production.version, window),
            "adapt_base": base_strategy(production),
            **settings.adapt_settings,
        }
        version = train_candidate(
            production,
            original,
            registry,
            strategy=strategy,
            timeout_s=settings.retrain_timeout_s,
            workdir=Path(workdir),
            test=test,
            overrides=overrides,
        )
    return registry.get(f"{production.name}:{version}")


def measure_adaptation(
    production: ModelVersion,
    candidate: ModelVersion,
    test: pd.DataFrame,
    labels: pd.DataFrame,
    inputs: list[str],
    settings: MonitorSettings,
) -> GateNumbers:
    """Both versions on production's test split (accuracy and overconfidence), on the held-out
    feedback labels, and label-free on the window's ``inputs`` the candidate did not adapt to."""
    graded, production_window, _ = _read_version(production, test, labels, inputs)
    (production_test, production_sure), (production_labels, _) = graded
    graded, candidate_window, rewritten = _read_version(candidate, test, labels, inputs)
    (candidate_test, candidate_sure), (candidate_labels, _) = graded
    train_labels = read_rows(production, "train")["label"]
    prior = {str(k): v / len(train_labels) for k, v in Counter(train_labels).items()}
    window = measure_window(
        production_window,
        candidate_window,
        prior,
        settings.adapt_max_mix_growth,
        settings.adapt_max_confidence_fall,
        rewritten,
        (overconfidence(production_sure, production_test), overconfidence(candidate_sure, candidate_test)),
    )
    return GateNumbers(
        test_changes=count_test_changes(production_test, candidate_test),
        production_test_accuracy=share(production_test),
        candidate_test_accuracy=share(candidate_test),
        production_feedback_accuracy=share(production_labels),
        candidate_feedback_accuracy=share(candidate_labels),
        feedback_train_rows=0,
        feedback_gate_rows=len(labels),
        tolerance=settings.adapt_tolerance,
        window=window,
    )


def _read_version(
    version: ModelVersion, test: pd.DataFrame, labels: pd.DataFrame, inputs: list[str]
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, list[str]], np.ndarray]:
    """One load and one pass of ``version`` over the test split, the feedback labels and the
    window's ``inputs``: per labelled frame (correct, confidence) as :func:`grade` gives them, the
    window's (probabilities, labels), and which inputs it reads rewritten."""
    model, processor = load_version_model(version)
    names = read_labels(version)
    texts = [*test["text"], *labels["text"]]
    probabilities = predict(model, processor, [*texts, *inputs]).probabilities
    answered = probabilities[: len(texts)]
    predicted = np.asarray(names, dtype=object)[answered.argmax(axis=1)]
    graded = grade(predicted, answered.max(axis=1), test, labels)
    return graded, (probabilities[len(texts) :], names), rewritten_inputs(processor, inputs)
