"""Logits to probabilities, in numpy: what every reader of a model's logits applies, and the grid
the inference log keeps them on.

Apart from :mod:`training.inference` so that the service's ONNX workers need not import torch.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


LOGGED_DECIMALS = 6  # the inference log's precision of a probability


def round_as_logged(probabilities: np.ndarray) -> np.ndarray:
    """``probabilities`` rounded as the inference log stores them (6 decimals).

    The monitor compares a version's reference (probabilities kept in full) with windows read
    back from the log, so it reads both on this grid: a confident model's other classes sit
    around 1e-9, which the log writes as 0: compared unrounded, every class probability of an
    unchanged stream reads as drift (p < 1e-120 on 480 texts).
    """
    return np.round(np.asarray(probabilities, dtype=np.float64), LOGGED_DECIMALS)
