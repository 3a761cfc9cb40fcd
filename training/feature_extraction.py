"""Strategies on a frozen encoder: `baseline` (nearest class centroid) and `head` (linear probe).

Both read embeddings computed once per run, and both end as an ordinary Classifier whose
linear head holds the solution, so that every strategy is saved, served and exported alike.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from training.calibration import calibrate, fit_temperature, fold_temperature
from training.context import StrategyResult, TrainContext
from training.model import Classifier
from training.probabilities import softmax
from training.probe import fit_linear_probe, fold_indices, install_probe, set_head


def class_centroids(embeddings: np.ndarray, y: np.ndarray, num_labels: int) -> np.ndarray:
    """Unit-norm mean embedding of each label, (labels, hidden)."""
    centroids = np.zeros((num_labels, embeddings.shape[1]), dtype=np.float64)
    for k in np.unique(y):  # a label absent from these rows (a fold, say) keeps a zero centroid
        centroids[k] = embeddings[y == k].mean(axis=0)
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(min=1e-12)


def train_baseline(ctx: TrainContext) -> StrategyResult:
    """The pretrained model without fine-tuning: nearest class centroid by cosine similarity."""
    start = time.perf_counter()
    num_labels = len(ctx.splits.labels)
    embeddings, y = ctx.frozen_embeddings("train"), ctx.label_ids("train")
    centroids = class_centroids(embeddings, y, num_labels)
    model = ctx.fresh_model()
    if not model.normalize:  # cosine similarity needs unit-norm inputs
        model.normalize = True
    set_head(model, centroids, np.zeros(num_labels))
    if ctx.config.selection != "cv":
        temperature = calibrate(model, ctx)
        return StrategyResult(
            "baseline", model.eval(), time.perf_counter() - start, 0, {"temperature": temperature}
        )
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(min=1e-12)
    out_of_fold = np.zeros((len(y), num_labels), dtype=np.float32)
    folds = fold_indices(y, ctx)
    for fitted, held in folds:
        out_of_fold[held] = unit[held] @ class_centroids(embeddings[fitted], y[fitted], num_labels).T
    return _cross_validated("baseline", model, out_of_fold, y, ctx, start, {"cv_folds": len(folds)})


def _cross_validated(
    strategy: str,
    model: Classifier,
    out_of_fold_logits: np.ndarray,
    y: np.ndarray,
    ctx: TrainContext,
    start: float,
    details: dict[str, Any],
) -> StrategyResult:
    """A strategy fitted on every training row, calibrated and scored on its out-of-fold logits."""
    from sklearn.metrics import f1_score

    temperature = fit_temperature(out_of_fold_logits, y) if ctx.config.calibrate else 1.0
    fold_temperature(model, temperature)
    probabilities = softmax(out_of_fold_logits / temperature)
    macro_f1 = float(f1_score(y, probabilities.argmax(axis=1), average="macro"))
    details = {**details, "temperature": temperature, "cv_macro_f1": macro_f1}
    trainable = model.head.weight.numel() + model.head.bias.numel() if strategy == "head" else 0
    result = StrategyResult(strategy, model.eval(), time.perf_counter() - start, trainable, details)
    result.out_of_fold = probabilities
    return result


def train_head(ctx: TrainContext) -> StrategyResult:
    """Feature extraction: frozen encoder, embeddings computed once, a trained linear head."""
    start = time.perf_counter()
    model = ctx.fresh_model()
    probe = fit_linear_probe(ctx)
    if probe.out_of_fold_logits is not None:
        set_head(model, probe.weight, probe.bias)
        return _cross_validated(
            "head", model, probe.out_of_fold_logits, ctx.label_ids("train"), ctx, start, probe.describe()
        )
    details, refit = install_probe(model, probe, ctx)
    trainable = model.head.weight.numel() + model.head.bias.numel()
    return StrategyResult("head", model.eval(), time.perf_counter() - start, trainable, details, refit)
