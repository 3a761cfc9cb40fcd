"""GPU path of training: CUDA placement and bf16/fp16 autocast. Skipped where CUDA is absent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from tests.helpers import tiny_rows
from training.context import TrainContext
from training.data import split_frames
from training.finetune import resolve_mixed_precision
from training.strategies import evaluate_split, run_strategy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_full_fine_tuning_on_cuda_with_autocast(make_config: Callable[..., Any]) -> None:
    config = make_config(strategy="full", device="auto")
    ctx = TrainContext.create(config, split_frames(tiny_rows(), validation_fraction=0.2, test_fraction=0.25))
    assert ctx.device.type == "cuda"
    assert resolve_mixed_precision("auto", ctx.device) in ("bf16", "fp16")
    result = run_strategy("full", ctx)
    assert next(result.model.parameters()).device.type == "cuda"
    assert evaluate_split(result, ctx, "train").accuracy == 1.0


def test_gpu_check_passes_on_cuda() -> None:
    from benchmarks import gpu_check

    assert gpu_check.main([]) == 0
