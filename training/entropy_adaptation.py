"""Entropy minimisation on unlabelled target inputs (TENT), with a diversity term.

TENT (Wang et al. 2021) trains only the BatchNorm scales and shifts so that the model's answers
on target inputs become confident. Alone it can collapse: answering one class with certainty
minimises entropy too. The loss here is SHOT's information maximisation (Liang et al. 2020):
the mean entropy of each answer minus the entropy of the mean answer, so confident answers must
stay spread over the classes. BatchNorm normalises with fixed statistics (the source's, or the
target's from :mod:`training.batch_norm_adaptation`), unlike TENT's batch statistics: a served
model answers one image at a time and must answer it the same way in any batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from training.batch_norm_adaptation import batch_norm_modules
from training.processors import Processor


def information_loss(
    logits: torch.Tensor, diversity_weight: float = 1.0
) -> tuple[torch.Tensor, float, float]:
    """Mean per-input entropy minus ``diversity_weight`` times the entropy of the mean answer.

    Returns:
        The loss, and the two entropies (nats) as floats.
    """
    probabilities = logits.float().softmax(dim=1)
    log_probabilities = logits.float().log_softmax(dim=1)
    entropy = -(probabilities * log_probabilities).sum(dim=1).mean()
    mean = probabilities.mean(dim=0)
    diversity = -(mean * mean.clamp(min=1e-12).log()).sum()
    return entropy - diversity_weight * diversity, float(entropy.detach()), float(diversity.detach())


def measure_information(
    model: nn.Module, processor: Processor, inputs: Sequence[Any], batch_size: int = 64
) -> tuple[float, float]:
    """The mean entropy of the model's answers on ``inputs`` and the entropy of their mean (nats)."""
    model.eval()
    device = next(model.parameters()).device
    entropy, total = 0.0, None
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = processor.encode(list(inputs[start : start + batch_size]))
            probabilities = model(*(t.to(device) for t in batch)).float().softmax(1)
            entropy += float(-(probabilities * probabilities.clamp(min=1e-12).log()).sum())
            total = probabilities.sum(0) if total is None else total + probabilities.sum(0)
    if total is None:
        return 0.0, 0.0
    mean = total / len(inputs)
    return entropy / len(inputs), float(-(mean * mean.clamp(min=1e-12).log()).sum())


def minimise_entropy(
    model: nn.Module,
    processor: Processor,
    inputs: Sequence[Any],
    *,
    epochs: int = 3,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    diversity_weight: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the BatchNorm scales and shifts on ``inputs`` to minimise :func:`information_loss`.

    Every other parameter is left as it is, and BatchNorm keeps its running statistics.

    Returns:
        For the version's manifest: trainable parameters, epochs, target inputs, and before and
        after, the answers' mean entropy, the entropy of their mean (diversity) and the objective.

    Raises:
        ValueError: the model has no BatchNorm layer.
    """
    layers = [m for _, m in batch_norm_modules(model)]
    if not layers:
        raise ValueError(
            "The model has no BatchNorm layer, so entropy minimisation has no scales and shifts to "
            "train; use self-train for this model."
        )
    before = measure_information(model, processor, inputs)
    requires = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    device = next(model.parameters()).device
    order = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    model.eval()  # fixed statistics; no dropout or stochastic depth
    try:
        for epoch in range(1, epochs + 1):
            shuffled = [inputs[i] for i in order.permutation(len(inputs))]
            entropies: list[float] = []
            for start in range(0, len(shuffled), batch_size):
                batch = processor.encode(shuffled[start : start + batch_size])
                loss, entropy, _ = information_loss(model(*(t.to(device) for t in batch)), diversity_weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                entropies.append(entropy)
            history.append({"epoch": epoch, "entropy": float(np.mean(entropies))})
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
    return {
        "trainable_params": sum(p.numel() for p in params),
        "epochs": epochs,
        "learning_rate": learning_rate,
        "target_inputs": len(inputs),
        "history": history,
        **_describe_information("before", before, diversity_weight),
        **_describe_information("after", measure_information(model, processor, inputs), diversity_weight),
    }


def _describe_information(
    when: str, measured: tuple[float, float], diversity_weight: float
) -> dict[str, float]:
    entropy, diversity = measured
    return {
        f"entropy_{when}": round(entropy, 4),
        f"diversity_{when}": round(diversity, 4),
        f"objective_{when}": round(entropy - diversity_weight * diversity, 4),
    }
