"""`make gpu-check` must skip cleanly where CUDA is absent (the GPU run is in test_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: test_gpu.py runs the check")
def test_gpu_check_skips_cleanly_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main([]) == 0
    assert "skipped (CUDA is not available" in capsys.readouterr().out
