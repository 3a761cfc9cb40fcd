"""Temperature scaling: one scalar T fitted on held-out logits and folded into the head.

Served logits are then calibrated already; the monitor's label-free accuracy estimate reads
them as probabilities.
"""

from __future__ import annotations

import numpy as np
import torch

from training.context import TrainContext
from training.model import Classifier


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on labelled data."""
    if len(y) == 0:
        return 1.0
    z = torch.as_tensor(logits, dtype=torch.float64)
    target = torch.as_tensor(y)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 1e-3, 1e3))


def fold_temperature(model: Classifier, temperature: float) -> None:
    """Divide the head by T so that served logits are already calibrated."""
    with torch.no_grad():
        model.head.weight.div_(temperature)
        model.head.bias.div_(temperature)


def calibrate(model: Classifier, ctx: TrainContext) -> float:
    """Fit a temperature on validation data (training data if there is none) and fold it in."""
    if not ctx.config.calibrate:
        return 1.0
    split = "validation" if len(ctx.splits.validation) else "train"
    temperature = fit_temperature(ctx.predict(model, split).logits, ctx.label_ids(split))
    fold_temperature(model, temperature)
    return temperature
