"""Batched inference: device choice, batches in the processor's order, logits and embeddings."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.model import Classifier
from training.probabilities import softmax
from training.processors import Processor


def choose_device(preference: str = "auto") -> torch.device:
    """``cuda`` when asked for or available under ``auto``, else ``cpu``.

    Under ``accelerate launch`` on several GPUs each process gets its own GPU (Accelerate's
    process state knows the local rank).
    """
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        from accelerate import PartialState

        device = PartialState().device
        return device if device.type == "cuda" else torch.device("cuda")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, mixed_precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for inference: bf16 where the GPU supports it, fp16 on older GPUs."""
    if device.type != "cuda" or mixed_precision == "no":
        return None
    if mixed_precision == "fp16":
        return torch.float16
    if mixed_precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@dataclass
class Predictions:
    """Model outputs for a list of inputs, in the order the inputs were given."""

    logits: np.ndarray  # (n, labels) float32
    embeddings: np.ndarray  # (n, hidden) float32, what the head reads

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, (n, labels)."""
        return softmax(self.logits)

    @property
    def predicted(self) -> np.ndarray:
        """Index of the most probable label per text, (n,)."""
        return np.asarray(self.logits.argmax(axis=1))


def iter_batches(
    processor: Processor, inputs: Sequence[Any], batch_size: int
) -> Iterator[tuple[np.ndarray, tuple[torch.Tensor, ...]]]:
    """Yield (original indices, input tensors) per batch, in the processor's order (texts of
    similar length together, to cut padding)."""
    order = processor.order(inputs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, processor.encode([inputs[i] for i in idx])


@torch.no_grad()
def predict(
    model: Classifier,
    processor: Processor,
    inputs: Sequence[Any],
    *,
    batch_size: int = 128,
    device: torch.device | None = None,
    mixed_precision: str = "auto",
    progress: str | None = None,
) -> Predictions:
    """Logits and embeddings for ``inputs`` (model put in eval mode, outputs in float32).

    Args:
        progress: a description to show a rich progress bar under (None: no bar).
    """
    device = device or next(model.parameters()).device
    dtype = autocast_dtype(device, mixed_precision)
    model.eval()
    hidden = int(model.head.in_features)
    logits = np.zeros((len(inputs), model.head.out_features), dtype=np.float32)
    embeddings = np.zeros((len(inputs), hidden), dtype=np.float32)
    batches: Iterable[tuple[np.ndarray, tuple[torch.Tensor, ...]]] = iter_batches(
        processor, inputs, batch_size
    )
    if progress:
        from training.progress import track_progress

        batches = track_progress(batches, progress, total=-(-len(inputs) // batch_size), unit="batches")
    for idx, batch in batches:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            emb = model.embed(*(tensor.to(device) for tensor in batch))
            out = model.classify(emb)
        logits[idx] = out.float().cpu().numpy()
        embeddings[idx] = emb.float().cpu().numpy()
    return Predictions(logits=logits, embeddings=embeddings)
