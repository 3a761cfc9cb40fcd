"""The linear probe: logistic regression on a frozen encoder's embeddings, put into the model's head.

The regularisation C is chosen on held-out rows (the validation split, or out-of-fold under
``selection: cv``); the embeddings are standardised for the fit and the scaling is folded into
the head afterwards, so the served model needs no extra step.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from training.calibration import calibrate
from training.context import LinearProbe, TrainContext
from training.errors import DataError
from training.groups import group_ids, has_groups, stratified_group_folds
from training.model import Classifier
from training.probabilities import softmax
from training.progress import track_progress

logger = logging.getLogger(__name__)

PROBE_C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength on standardised embeddings


def set_head(model: Classifier, weight: np.ndarray, bias: np.ndarray) -> None:
    """Copy a (labels, hidden) weight and (labels,) bias into the model's head."""
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        model.head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def fold_indices(y: np.ndarray, ctx: TrainContext) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds of the training rows: ``cv_folds``, fewer when a label has fewer rows;
    whole groups when the rows carry them (``group_column``), fewer folds when there are fewer.

    Raises:
        DataError: the rows carry fewer than two groups.
    """
    import warnings

    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    folds = max(2, min(ctx.config.cv_folds, int(counts[counts > 0].min())))
    train = ctx.splits.train
    if has_groups(train):
        groups = group_ids(train)
        count = len(set(groups))
        if count < 2:
            raise DataError(
                f"selection 'cv' keeping each {ctx.config.group_column} group in one fold needs at "
                f"least 2 groups of training rows; found {count}."
            )
        return stratified_group_folds(y, groups, min(folds, count), ctx.config.seed)
    with warnings.catch_warnings():  # a label with a single row is in one fold only: that is fine
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedKFold(folds, shuffle=True, random_state=ctx.config.seed)
        return list(splitter.split(np.zeros(len(y)), y))


def _fit_probe(x: np.ndarray, y: np.ndarray, c: float, balanced: bool, seed: int) -> Any:
    probe = LogisticRegression(
        C=c, class_weight="balanced" if balanced else None, max_iter=2000, random_state=seed
    )
    return probe.fit(x, y)


def fit_probe(
    train: np.ndarray, y: np.ndarray, val: np.ndarray, yv: np.ndarray, ctx: TrainContext
) -> LinearProbe:
    """Logistic regression on embeddings (n, hidden), C chosen on validation log-loss.

    Returns the probe trained on the training rows and, when there is validation data and
    ``refit_head`` is set, its ``refit`` on training plus validation rows with the chosen C.
    """
    # Standardised features make one C grid fit every encoder's embedding scale.
    mean, std = train.mean(axis=0), train.std(axis=0).clip(min=1e-6)
    x, xv = (train - mean) / std, (val - mean) / std
    balanced, seed = ctx.config.class_weighting == "balanced", ctx.config.seed
    grid = PROBE_C_GRID if len(yv) else (1.0,)
    steps = track_progress(
        grid, f"fitting the linear probe ({len(y):,} rows)", total=len(grid), unit="values of C"
    )
    fitted = {c: _fit_probe(x, y, c, balanced, seed) for c in steps}
    # Log-loss, not macro-F1: on a validation split of a few rows per label, F1 moves by chance
    # between neighbouring Cs (a BANKING77 retrain picked C=10 on a 0.003 F1 lead and tested
    # 0.903, the retrain before it 0.920 at C=0.1); the proper scoring rule is smoother and also
    # favours the calibrated confidences that the monitor's accuracy estimate reads.
    scores = {
        c: float(log_loss(yv, p.predict_proba(xv), labels=p.classes_)) for c, p in fitted.items() if len(yv)
    }
    best_c = min(scores, key=lambda c: scores[c]) if scores else 1.0
    labels, hidden = len(ctx.splits.labels), x.shape[1]
    weight, bias = _unstandardise(*_expand_to_all_labels(fitted[best_c], labels, hidden), mean, std)
    probe = LinearProbe(weight, bias, best_c, scores, chosen_on="validation")
    if len(yv) and ctx.config.refit_head:
        refit = _fit_probe(np.vstack([x, xv]), np.concatenate([y, yv]), best_c, balanced, seed)
        probe.refit = _unstandardise(*_expand_to_all_labels(refit, labels, hidden), mean, std)
    return probe


def fit_probe_cv(train: np.ndarray, y: np.ndarray, ctx: TrainContext) -> LinearProbe:
    """Logistic regression on embeddings, C chosen on cross-validated log-loss, fitted on all rows.

    Returns the probe fitted on every training row with the chosen C, with the out-of-fold
    logits of that C (standardised scale folded in).
    """
    mean, std = train.mean(axis=0), train.std(axis=0).clip(min=1e-6)
    x = (train - mean) / std
    balanced, seed = ctx.config.class_weighting == "balanced", ctx.config.seed
    labels, hidden = len(ctx.splits.labels), x.shape[1]
    folds = fold_indices(y, ctx)
    logits = {c: np.zeros((len(y), labels), dtype=np.float64) for c in PROBE_C_GRID}
    steps = track_progress(folds, f"cross-validating the linear probe ({len(y):,} rows)", len(folds), "folds")
    for fitted, held in steps:
        for c in PROBE_C_GRID:
            weight, bias = _expand_to_all_labels(
                _fit_probe(x[fitted], y[fitted], c, balanced, seed), labels, hidden
            )
            logits[c][held] = x[held] @ weight.T + bias
    scores = {c: float(log_loss(y, softmax(logits[c]), labels=list(range(labels)))) for c in PROBE_C_GRID}
    best_c = min(scores, key=lambda c: scores[c])
    final = _fit_probe(x, y, best_c, balanced, seed)
    weight, bias = _unstandardise(*_expand_to_all_labels(final, labels, hidden), mean, std)
    return LinearProbe(
        weight, bias, best_c, scores, "cv", out_of_fold_logits=logits[best_c], cv_folds=len(folds)
    )


def fit_linear_probe(ctx: TrainContext) -> LinearProbe:
    """:func:`fit_probe` (or, under ``selection: cv``, :func:`fit_probe_cv`) on the pretrained
    encoder's embeddings, computed once per run."""
    if ctx.probe is None and ctx.config.selection == "cv":
        ctx.probe = fit_probe_cv(ctx.frozen_embeddings("train"), ctx.label_ids("train"), ctx)
    if ctx.probe is None:
        ctx.probe = fit_probe(
            ctx.frozen_embeddings("train"),
            ctx.label_ids("train"),
            ctx.frozen_embeddings("validation"),
            ctx.label_ids("validation"),
            ctx,
        )
    return ctx.probe


def install_probe(
    model: Classifier, probe: LinearProbe, ctx: TrainContext
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """Put the probe fitted on training rows into the model's head, calibrated.

    Returns what was done (for the manifest) and the head refitted on train + validation with
    the same temperature folded in, for `StrategyResult.finalize` once selection is over: the
    temperature is fitted with the probe that never saw validation data, since calibrating the
    refitted one there would make it look more reliable than it is.
    """
    set_head(model, probe.weight, probe.bias)
    temperature = calibrate(model, ctx)
    refit = None
    if probe.refit is not None:
        refit = (probe.refit[0] / temperature, probe.refit[1] / temperature)
    details = {**probe.describe(), "temperature": temperature, "refit_on_validation": False}
    return details, refit


def _unstandardise(
    weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fold feature standardisation into a linear layer: W x' + b with x' = (x - mean) / std."""
    return weight / std, bias - (weight / std) @ mean


def _expand_to_all_labels(probe: Any, num_labels: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """sklearn drops classes absent from training data; give them a very negative bias instead."""
    weight = np.zeros((num_labels, hidden), dtype=np.float32)
    bias = np.full(num_labels, -1e4, dtype=np.float32)
    coef, intercept = probe.coef_, probe.intercept_
    if len(probe.classes_) == 2:  # binary problems come back as one row
        coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    weight[probe.classes_] = coef
    bias[probe.classes_] = intercept
    return weight, bias
