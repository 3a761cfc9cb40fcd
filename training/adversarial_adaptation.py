"""Adversarial domain adaptation (DANN, Ganin et al. 2016): the top of the encoder learns features
a domain classifier cannot tell apart between the source and the target, while the head keeps
answering the source labels.

The domain classifier reads the embeddings through a gradient-reversal layer, so one backward
pass trains it to separate the domains and the encoder to confuse it. The reversal's weight
ramps from 0 to 1 over training (Ganin's schedule): early on, the features are left to the label
loss. BatchNorm keeps its statistics, as in every fine-tuning strategy here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from training.finetune import freeze_batch_norm, prepare_partial
from training.inference import predict
from training.model import Classifier, count_trainable
from training.processors import Processor

DISCRIMINATOR_SPEEDUP = 10.0


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times ``-weight`` backward."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def reversal_weight(progress: float) -> float:
    """Ganin's ramp from 0 (start) to about 1 (end): 2 / (1 + exp(-10 p)) - 1."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def domain_gap(
    model: Classifier, processor: Processor, source: Sequence[Any], target: Sequence[Any], batch_size: int
) -> float:
    """Distance between the mean source and mean target embeddings (what alignment shrinks)."""
    device = next(model.parameters()).device
    means = [
        predict(model, processor, list(inputs), batch_size=batch_size, device=device).embeddings.mean(axis=0)
        for inputs in (source, target)
    ]
    return float(np.linalg.norm(means[0] - means[1]))


def align_domains(
    model: Classifier,
    processor: Processor,
    source: Sequence[Any],
    labels: np.ndarray,
    target: Sequence[Any],
    *,
    layers: int = 2,
    epochs: int = 3,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    class_weights: torch.Tensor | None = None,
    augment: bool = False,
    domain_weight: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the top ``layers`` encoder layers and the head on the labelled ``source`` and the
    unlabelled ``target`` with the DANN objective.

    Returns:
        For the version's manifest: trainable parameters, epochs, the domain gap (distance of the
        mean embeddings) before and after, and the domain classifier's accuracy in the last epoch.
    """
    device = next(model.parameters()).device
    before = domain_gap(model, processor, source, target, batch_size)
    prepare_partial(model, layers)
    model.head.requires_grad_(True)
    hidden = model.head.in_features
    torch.manual_seed(seed)
    discriminator = nn.Sequential(nn.Linear(hidden, 64), nn.ReLU(), nn.Linear(64, 1)).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(discriminator.parameters())
    trainable = count_trainable(model)
    # The discriminator learns faster than the features move: an encoder that outruns it learns
    # to flip its answers (still separable features) instead of confusing it.
    optimizer = torch.optim.AdamW(
        [
            {"params": params[: -len(list(discriminator.parameters()))], "lr": learning_rate},
            {"params": list(discriminator.parameters()), "lr": learning_rate * DISCRIMINATOR_SPEEDUP},
        ],
        weight_decay=0.01,
    )
    label_loss = nn.CrossEntropyLoss(weight=None if class_weights is None else class_weights.to(device))
    domain_loss = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    steps = math.ceil(len(source) / batch_size)
    correct, seen = 0, 0
    for epoch in range(epochs):
        order = rng.permutation(len(source))
        correct, seen = 0, 0
        for step in range(steps):
            chosen = order[step * batch_size : (step + 1) * batch_size]
            drawn = rng.choice(len(target), size=len(chosen), replace=len(target) < len(chosen))
            model.train()
            freeze_batch_norm(model)
            source_batch = processor.encode([source[i] for i in chosen], augment=augment, rng=rng)
            target_batch = processor.encode([target[i] for i in drawn], augment=augment, rng=rng)
            source_embeddings = model.embed(*(t.to(device) for t in source_batch))
            target_embeddings = model.embed(*(t.to(device) for t in target_batch))
            truth = torch.as_tensor(labels[chosen], device=device)
            weight = domain_weight * reversal_weight((epoch * steps + step) / max(epochs * steps - 1, 1))
            both = torch.cat([source_embeddings, target_embeddings])
            guess = discriminator(GradientReversal.apply(both, weight)).squeeze(1)
            domain = torch.cat([torch.zeros(len(chosen)), torch.ones(len(drawn))]).to(device)
            loss = label_loss(model.classify(source_embeddings), truth) + domain_loss(guess, domain)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            correct += int(((guess > 0).float() == domain).sum())
            seen += len(domain)
    model.requires_grad_(True)
    model.eval()
    return {
        "trainable_params": trainable,
        "epochs": epochs,
        "layers": layers,
        "learning_rate": learning_rate,
        "domain_gap_before": round(before, 4),
        "domain_gap_after": round(domain_gap(model, processor, source, target, batch_size), 4),
        # 0.5: the domains cannot be told apart from the features any more
        "domain_accuracy_last_epoch": round(correct / max(seen, 1), 4),
    }
