"""BatchNorm statistics re-estimated on unlabelled target inputs, mixed with the source's.

A change of lighting is, to a first order, an affine change of the pixel values. The first
convolution passes it on channel by channel, and the BatchNorm after it undoes it exactly when it
normalises with the target's statistics. Deeper layers' statistics also move with what the
target images show (another mix of defects, another tile), so re-estimating every layer (plain
AdaBN) lets content shifts through as if they were lighting: on the magnetic tiles that lowered
macro-F1 from 0.904 to 0.815. Which layers adapt, and how much of the target's statistics each
takes (``mix``, as in Schneider et al. 2020, "Improving robustness against common corruptions by
covariate shift adaptation"), are therefore settings, with defaults measured by
``benchmarks/adaptation.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from training.processors import Processor

BatchNormLayers = Literal["stem", "early", "all"]
BATCH_NORM_LAYERS: tuple[str, ...] = ("stem", "early", "all")


def batch_norm_modules(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every BatchNorm layer of ``model`` that keeps running statistics, in the order the model
    defines them (input first)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _statistics(module: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The running mean, variance and batch count of a layer that tracks them."""
    mean, var, tracked = module.running_mean, module.running_var, module.num_batches_tracked
    assert mean is not None and var is not None and tracked is not None
    return mean, var, tracked


def select_batch_norm(model: nn.Module, layers: str) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BatchNorm layers ``layers`` names: ``stem`` (the first), ``early`` (the first third) or
    ``all``.

    Raises:
        ValueError: an unknown name.
    """
    modules = batch_norm_modules(model)
    if layers == "stem":
        return modules[:1]
    if layers == "early":
        return modules[: max(1, len(modules) // 3)]
    if layers == "all":
        return modules
    raise ValueError(f"Unknown BatchNorm layers {layers!r}; expected one of {list(BATCH_NORM_LAYERS)}")


def _batches(
    processor: Processor, inputs: Sequence[Any], batch_size: int
) -> Iterator[tuple[torch.Tensor, ...]]:
    for start in range(0, len(inputs), batch_size):
        yield processor.encode(list(inputs[start : start + batch_size]))


@torch.no_grad()
def estimate_target_statistics(
    model: nn.Module,
    processor: Processor,
    inputs: Sequence[Any],
    layers: str,
    batch_size: int = 32,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and variance of the target inputs at each selected BatchNorm layer.

    The selected layers normalise with their batch's statistics while the target passes (AdaBN),
    every other layer with its source statistics; the model's own statistics are unchanged after.
    """
    selected = select_batch_norm(model, layers)
    saved = {name: ([t.clone() for t in _statistics(m)], m.momentum) for name, m in selected}
    was_training = model.training
    model.eval()
    for _, module in selected:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over every target batch
        module.train()
    device = next(model.parameters()).device
    try:
        for batch in _batches(processor, inputs, batch_size):
            model(*(t.to(device) for t in batch))
        return {name: (_statistics(m)[0].clone(), _statistics(m)[1].clone()) for name, m in selected}
    finally:
        for name, module in selected:
            values, momentum = saved[name]
            for current, value in zip(_statistics(module), values, strict=True):
                current.copy_(value)
            module.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def mix_statistics(
    model: nn.Module, target: dict[str, tuple[torch.Tensor, torch.Tensor]], mix: float
) -> dict[str, float]:
    """Set each layer's statistics to ``(1 - mix) * source + mix * target``; return, per layer, how
    far its mean moved (in source standard deviations, averaged over channels)."""
    modules = dict(batch_norm_modules(model))
    moved: dict[str, float] = {}
    for name, (mean, var) in target.items():
        source_mean, source_var, _ = _statistics(modules[name])
        new_mean = (1 - mix) * source_mean + mix * mean
        moved[name] = float(((new_mean - source_mean).abs() / source_var.sqrt().clamp(min=1e-6)).mean())
        source_mean.copy_(new_mean)
        source_var.copy_((1 - mix) * source_var + mix * var)
    return moved


def adapt_batch_norm(
    model: nn.Module,
    processor: Processor,
    inputs: Sequence[Any],
    layers: str = "stem",
    mix: float = 1.0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Re-estimate the selected BatchNorm layers' statistics on ``inputs`` and mix them in.

    Returns:
        What was done, for the version's manifest: layers, mix, the number of layers and inputs,
        and the mean shift of the statistics (in source standard deviations).

    Raises:
        ValueError: the model has no BatchNorm layer (a transformer: nothing to re-estimate).
    """
    if not batch_norm_modules(model):
        raise ValueError(
            "The model has no BatchNorm layer, so there are no statistics to re-estimate; use "
            "another adaptation strategy (tent also needs BatchNorm; self-train works for any model)."
        )
    target = estimate_target_statistics(model, processor, inputs, layers, batch_size)
    moved = mix_statistics(model, target, mix)
    return {
        "layers": layers,
        "mix": mix,
        "adapted_layers": len(moved),
        "target_inputs": len(inputs),
        "mean_shift_in_source_std": round(sum(moved.values()) / max(len(moved), 1), 4),
    }
