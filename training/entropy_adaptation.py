"""Entropy minimisation on unlabelled target inputs (TENT), held to the training label mix.

TENT (Wang et al. 2021) trains only the BatchNorm scales and shifts so that the model's answers
on target inputs become confident. Alone it can collapse: answering one class with certainty
minimises entropy too. SHOT (Liang et al. 2020) adds the entropy of the mean answer, which
pulls the answers toward *equal* shares of every class; inspection data is mostly one class
(70% of the magnetic tiles are `free`), so that term pushes good images into defect classes.
The loss here is the mean entropy of each answer plus the KL divergence of the mean answer from
the training label distribution: confident answers, in about the proportions the model was
trained on. BatchNorm normalises with fixed statistics (the source's, or matched by
:mod:`training.batch_norm_adaptation`), unlike TENT's batch statistics: a served model answers
one image at a time and must answer it the same way in any batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from training.batch_norm_adaptation import batch_norm_modules
from training.inference import predict
from training.model import Classifier
from training.processors import Processor


def _divergence(mean: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """KL(mean || prior) in nats."""
    return (mean * (mean.clamp(min=1e-12).log() - prior.clamp(min=1e-12).log())).sum()


def information_loss(
    logits: torch.Tensor, prior: torch.Tensor, prior_weight: float = 1.0
) -> tuple[torch.Tensor, float, float]:
    """Mean per-input entropy plus ``prior_weight`` times KL(mean answer || ``prior``).

    Returns:
        The loss, and the entropy and the divergence (nats) as floats.
    """
    probabilities = logits.float().softmax(dim=1)
    entropy = -(probabilities * logits.float().log_softmax(dim=1)).sum(dim=1).mean()
    divergence = _divergence(probabilities.mean(dim=0), prior.to(probabilities.device))
    loss = entropy + prior_weight * divergence
    return loss, float(entropy.detach()), float(divergence.detach())


def measure_information(
    model: Classifier, processor: Processor, inputs: Sequence[Any], prior: torch.Tensor, batch_size: int = 64
) -> tuple[float, float]:
    """The mean entropy of the model's answers on ``inputs`` and KL(mean answer || ``prior``)."""
    if not len(inputs):
        return 0.0, 0.0
    probabilities = torch.as_tensor(
        predict(model, processor, inputs, batch_size=batch_size, mixed_precision="no").probabilities
    )
    entropy = float(-(probabilities * probabilities.clamp(min=1e-12).log()).sum(1).mean())
    return entropy, float(_divergence(probabilities.mean(0), prior))


def label_prior(label_ids: np.ndarray, num_labels: int) -> torch.Tensor:
    """The share of each label among ``label_ids`` (a label absent from them gets a tiny share)."""
    counts = np.bincount(label_ids, minlength=num_labels).astype(np.float64) + 1e-3
    return torch.as_tensor(counts / counts.sum(), dtype=torch.float32)


def minimise_entropy(
    model: Classifier,
    processor: Processor,
    inputs: Sequence[Any],
    prior: torch.Tensor,
    *,
    epochs: int = 3,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    prior_weight: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the BatchNorm scales and shifts on ``inputs`` to minimise :func:`information_loss`.

    Every other parameter is left as it is, and BatchNorm keeps its running statistics.

    Returns:
        For the version's manifest: trainable parameters, epochs, target inputs, and before and
        after, the answers' mean entropy, their divergence from the prior and the objective.

    Raises:
        ValueError: the model has no BatchNorm layer.
    """
    layers = [m for _, m in batch_norm_modules(model)]
    if not layers:
        raise ValueError(
            "The model has no BatchNorm layer, so entropy minimisation has no scales and shifts to "
            "train; use self-train for this model."
        )
    before = measure_information(model, processor, inputs, prior)
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
                logits = model(*(t.to(device) for t in batch))
                loss, entropy, _ = information_loss(logits, prior, prior_weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                entropies.append(entropy)
            history.append({"epoch": epoch, "entropy": float(np.mean(entropies))})
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
    after = measure_information(model, processor, inputs, prior)
    return {
        "trainable_params": sum(p.numel() for p in params),
        "epochs": epochs,
        "learning_rate": learning_rate,
        "target_inputs": len(inputs),
        "history": history,
        **_describe_information("before", before, prior_weight),
        **_describe_information("after", after, prior_weight),
    }


def _describe_information(when: str, measured: tuple[float, float], prior_weight: float) -> dict[str, float]:
    entropy, divergence = measured
    return {
        f"entropy_{when}": round(entropy, 4),
        f"prior_divergence_{when}": round(divergence, 4),
        f"objective_{when}": round(entropy + prior_weight * divergence, 4),
    }
