"""Self-training: the source model labels the target inputs it is sure of, and the base strategy
trains again on the source rows plus those.

An input is pseudo-labelled only when the calibrated source model gives its label at least
``pseudo_label_threshold`` probability and, where the modality augments (images), answers the
same label for a random view of it (flips, small rotation and crop, brightness and contrast):
an answer that a change of view overturns is not one to learn from. Pseudo-labelled rows join
the training split only; validation and test stay source rows the candidate never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from training.context import TrainContext
from training.inference import predict
from training.model import Classifier
from training.processors import Processor


@torch.no_grad()
def answer(
    model: Classifier,
    processor: Processor,
    inputs: Sequence[Any],
    *,
    augment: bool = False,
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """Probabilities (n, labels) of ``model`` for ``inputs``, or for one random view of each."""
    if not augment:
        return predict(model, processor, inputs, batch_size=batch_size, mixed_precision="no").probabilities
    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, len(inputs), batch_size):
        batch = processor.encode(list(inputs[start : start + batch_size]), augment=augment, rng=rng)
        out.append(model(*(t.to(device) for t in batch)).float().softmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def pseudo_label(
    model: Classifier,
    processor: Processor,
    target: pd.DataFrame,
    inputs: Sequence[Any],
    labels: list[str],
    threshold: float,
    augments: bool,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The target rows the model labels with confidence (``label`` set), and what was kept.

    Returns:
        The pseudo-labelled rows, and for the manifest: inputs, kept, the threshold, how many a
        view overturned, and the kept rows per label.
    """
    probabilities = answer(model, processor, inputs)
    predicted = probabilities.argmax(axis=1)
    confident = probabilities.max(axis=1) >= threshold
    agree = np.ones(len(inputs), dtype=bool)
    if augments:
        agree = answer(model, processor, inputs, augment=True, seed=seed).argmax(axis=1) == predicted
    keep = confident & agree
    rows = target[keep].assign(label=[labels[i] for i in predicted[keep]]).reset_index(drop=True)
    counts = rows["label"].value_counts()
    return rows, {
        "target_inputs": len(inputs),
        "threshold": threshold,
        "confident": int(confident.sum()),
        "overturned_by_a_view": int((confident & ~agree).sum()),
        "pseudo_labelled": int(keep.sum()),
        "per_label": {label: int(counts.get(label, 0)) for label in labels},
    }


def with_pseudo_labels(ctx: TrainContext, rows: pd.DataFrame) -> TrainContext:
    """A context whose training split also holds ``rows``; validation and test, and their cached
    frozen embeddings, are the original's."""
    splits = replace(ctx.splits, train=pd.concat([ctx.splits.train, rows], ignore_index=True))
    frozen = {k: v for k, v in ctx.frozen.items() if k != "train"}
    return replace(ctx, splits=splits, frozen=frozen, probe=None)
