"""Logits to probabilities, in numpy: what every reader of a model's logits applies.

Apart from :mod:`training.inference` so that the service's ONNX workers need not import torch.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))
