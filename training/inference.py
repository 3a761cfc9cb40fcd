"""Batched inference: device choice, length-sorted batches, logits and embeddings."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.model import TextClassifier


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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


@dataclass
class Predictions:
    """Model outputs for a list of texts, in the order the texts were given."""

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


def iter_length_sorted_batches(
    tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Yield (original indices, tokenised batch), texts of similar length together to cut padding."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        yield idx, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@torch.no_grad()
def predict(
    model: TextClassifier,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 128,
    device: torch.device | None = None,
    mixed_precision: str = "auto",
    progress: str | None = None,
) -> Predictions:
    """Logits and embeddings for ``texts`` (model put in eval mode, outputs in float32).

    Args:
        progress: a description to show a rich progress bar under (None: no bar).
    """
    device = device or next(model.parameters()).device
    dtype = autocast_dtype(device, mixed_precision)
    model.eval()
    hidden = int(model.head.in_features)
    logits = np.zeros((len(texts), model.head.out_features), dtype=np.float32)
    embeddings = np.zeros((len(texts), hidden), dtype=np.float32)
    batches: Iterable[tuple[np.ndarray, dict[str, torch.Tensor]]] = iter_length_sorted_batches(
        tokenizer, texts, max_length, batch_size
    )
    if progress:
        from training.progress import track_progress

        batches = track_progress(batches, progress, total=-(-len(texts) // batch_size), unit="batches")
    for idx, batch in batches:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            emb = model.embed(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out = model.classify(emb)
        logits[idx] = out.float().cpu().numpy()
        embeddings[idx] = emb.float().cpu().numpy()
    return Predictions(logits=logits, embeddings=embeddings)
