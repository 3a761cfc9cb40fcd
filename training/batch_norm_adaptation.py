"""BatchNorm statistics matched to unlabelled target inputs, so the target looks like the source.

A change of lighting is, to a first order, an affine change of the pixel values. The first
convolution passes it on channel by channel, and the BatchNorm after it can undo it. Plain
AdaBN normalises with the target's own statistics, which is right only for a network trained
on the source domain's statistics; a transferred network keeps its pretraining's (ImageNet's:
Refit freezes BatchNorm while fine-tuning), and its head learnt the source images as *they*
look under those. So each adapted layer here normalises the target so that it comes out as the
source does: with source statistics (mu_s, s_s) and target statistics (mu_t, s_t) measured at
the layer, and the layer's own (mu, s), the layer takes s' = s * s_t / s_s and
mu' = mu_t - (mu_s - mu) * s_t / s_s. Identical source and target leave it unchanged. Deeper
layers also move with what the target images show (another mix of defects), so which layers
adapt, and how much (``mix``, the share of the matched statistics, as in Schneider et al. 2020),
are settings with defaults measured by ``benchmarks/adaptation.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from training.inference import iter_batches
from training.processors import Processor

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


@torch.no_grad()
def estimate_statistics(
    model: nn.Module,
    processor: Processor,
    inputs: Sequence[Any],
    layers: str,
    batch_size: int = 32,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and variance of ``inputs`` at each selected BatchNorm layer's input, over
    every input and position (not an average of batch averages: a short last batch counts for
    what it holds).

    The selected layers normalise with their batch's statistics while the inputs pass (AdaBN),
    every other layer with its own; the model's statistics are unchanged after.
    """
    selected = select_batch_norm(model, layers)
    saved = {name: [t.clone() for t in _statistics(m)] for name, m in selected}
    sums: dict[str, list[torch.Tensor | float]] = {name: [0.0, 0.0, 0.0] for name, _ in selected}

    def accumulate(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].double().transpose(0, 1).flatten(1)  # (channels, values)
            total = sums[name]
            total[0], total[1], total[2] = (
                total[0] + x.sum(1),
                total[1] + (x * x).sum(1),
                total[2] + x.shape[1],
            )

        return hook

    handles = [m.register_forward_pre_hook(accumulate(name)) for name, m in selected]
    was_training = model.training
    model.eval()
    for _, module in selected:
        module.train()
    device = next(model.parameters()).device
    try:
        for _, batch in iter_batches(processor, inputs, batch_size):
            model(*(t.to(device) for t in batch))
    finally:
        for handle in handles:
            handle.remove()
        for name, module in selected:
            for current, value in zip(_statistics(module), saved[name], strict=True):
                current.copy_(value)
        model.train(was_training)
    out = {}
    for name, module in selected:
        total, squares, count = sums[name]
        mean = torch.as_tensor(total) / float(count)
        var = torch.as_tensor(squares) / float(count) - mean * mean
        dtype = _statistics(module)[0].dtype
        out[name] = (mean.to(dtype), var.clamp(min=0).to(dtype))
    return out


@torch.no_grad()
def match_statistics(
    model: nn.Module,
    source: dict[str, tuple[torch.Tensor, torch.Tensor]],
    target: dict[str, tuple[torch.Tensor, torch.Tensor]],
    mix: float,
) -> dict[str, float]:
    """Set each layer's statistics so the target normalises as the source did (module docstring),
    ``mix`` of the way; return, per layer, how far its mean moved (in its standard deviations,
    averaged over channels)."""
    modules = dict(batch_norm_modules(model))
    moved: dict[str, float] = {}
    for name, (target_mean, target_var) in target.items():
        mean, var, _ = _statistics(modules[name])
        source_mean, source_var = source[name]
        scale = (target_var / source_var.clamp(min=1e-12)).sqrt()
        matched_mean = target_mean - (source_mean - mean) * scale
        new_mean = (1 - mix) * mean + mix * matched_mean
        moved[name] = float(((new_mean - mean).abs() / var.sqrt().clamp(min=1e-6)).mean())
        var.copy_((1 - mix) * var + mix * var * scale**2)
        mean.copy_(new_mean)
    return moved


def adapt_batch_norm(
    model: nn.Module,
    processor: Processor,
    inputs: Sequence[Any],
    source_inputs: Sequence[Any],
    layers: str = "stem",
    mix: float = 1.0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Match the selected BatchNorm layers' statistics to the target ``inputs``, given inputs
    of the source domain the model was trained on.

    Returns:
        What was done, for the version's manifest: layers, mix, the number of layers, target
        and source inputs, and the mean shift of the statistics (in their standard deviations).

    Raises:
        ValueError: the model has no BatchNorm layer (a transformer: nothing to re-estimate).
    """
    if not batch_norm_modules(model):
        raise ValueError(
            "The model has no BatchNorm layer, so there are no statistics to re-estimate; use "
            "another adaptation strategy (tent also needs BatchNorm; self-train works for any model)."
        )
    source = estimate_statistics(model, processor, source_inputs, layers, batch_size)
    target = estimate_statistics(model, processor, inputs, layers, batch_size)
    moved = match_statistics(model, source, target, mix)
    return {
        "layers": layers,
        "mix": mix,
        "adapted_layers": len(moved),
        "target_inputs": len(inputs),
        "source_inputs": len(source_inputs),
        "mean_shift_in_std": round(sum(moved.values()) / max(len(moved), 1), 4),
    }
