"""Inference backends: the same saved version run by torch or by ONNX Runtime.

A backend only maps model inputs (token ids, or pixels) to logits; tokenisation, image
preprocessing, ordering and post-processing are shared (``service.predictor``), so both backends
answer the same request identically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from service.settings import cuda_present
from training.onnx_files import QUANTIZED_FILE, find_export
from training.processors import ImageProcessor, Processor, TextProcessor
from training.registry import ModelVersion

if TYPE_CHECKING:
    from training.model import Classifier

logger = logging.getLogger(__name__)


@dataclass
class Encoded:
    """A batch's model inputs by name, in the model's order, with a truncation flag per input.

    Texts: ``input_ids`` and ``attention_mask`` (n, seq) int64, padded to the longest; images:
    ``pixel_values`` (n, 3, size, size) float32.
    """

    arrays: dict[str, np.ndarray]
    truncated: np.ndarray  # (n,) bool: the text had more tokens than the model's maximum

    def sizes(self) -> np.ndarray:
        """What a model call's cost grows with, per input: its tokens; 1 for an image."""
        mask = self.arrays.get("attention_mask")
        return mask.sum(axis=1) if mask is not None else np.ones(len(self.truncated), dtype=np.int64)

    def take(self, rows: np.ndarray) -> Encoded:
        """The inputs at ``rows``, texts padded only to the longest of them."""
        arrays = {name: array[rows] for name, array in self.arrays.items()}
        if "attention_mask" in arrays:
            width = int(arrays["attention_mask"].sum(axis=1).max()) if len(rows) else 0
            arrays = {name: array[:, :width] for name, array in arrays.items()}
        return Encoded(arrays, self.truncated[rows])


def encode_inputs(processor: Processor, inputs: list[Any]) -> Encoded:
    """The processor's model inputs for ``inputs`` (texts, or image bytes already checked)."""
    if isinstance(processor, TextProcessor):
        return encode_texts(processor.tokenizer, processor.prepare(inputs), processor.max_length)
    if not isinstance(processor, ImageProcessor):
        raise TypeError(f"No encoding for a {type(processor).__name__}: expected a text or image processor")
    [name] = processor.input_names
    return Encoded({name: processor.pixels(inputs)}, np.zeros(len(inputs), dtype=bool))


def encode_texts(tokenizer: Any, texts: list[str], max_length: int) -> Encoded:
    """Tokenise ``texts`` in one call, truncating to ``max_length`` and recording who was cut.

    Overflowing tokens come back as extra rows mapped to their text; a text with more than one
    row was truncated, and only its first row (the truncated text) is kept.
    """
    enc = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        padding=True,
        return_overflowing_tokens=True,
        return_tensors="np",
    )
    mapping = np.asarray(enc["overflow_to_sample_mapping"])
    counts = np.bincount(mapping, minlength=len(texts))
    first = np.unique(mapping, return_index=True)[1]
    ids = np.asarray(enc["input_ids"], dtype=np.int64)[first]
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)[first]
    width = int(mask.sum(axis=1).max()) if len(texts) else 0  # overflow rows may pad wider
    return Encoded({"input_ids": ids[:, :width], "attention_mask": mask[:, :width]}, counts > 1)


class Backend(Protocol):
    """Maps model inputs (token ids, pixels) to logits and embeddings."""

    name: str
    device: str

    def run(self, encoded: Encoded) -> tuple[np.ndarray, np.ndarray]:
        """Logits (n, labels) and the embeddings the head read (n, hidden), float32."""
        ...


class TorchBackend:
    """The PyTorch model; CUDA with bf16/fp16 autocast when a GPU is used."""

    name = "torch"

    def __init__(self, model: Classifier, device: str) -> None:
        import torch

        from training.inference import autocast_dtype

        self._torch = torch
        self._device = torch.device(device)
        self.model = model.to(self._device).eval()
        self._dtype = autocast_dtype(self._device)
        self.device = device
        self._staging = PinnedStaging(torch) if self._device.type == "cuda" else None

    def run(self, encoded: Encoded) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings, float32; on CUDA the inputs go through reused pinned buffers."""
        torch = self._torch
        arrays = list(encoded.arrays.values())
        if self._staging is not None:
            with self._staging.lock:  # the buffers are reused: one batch at a time
                return self._forward(*self._staging.upload(self._device, *arrays))
        return self._forward(*(torch.from_numpy(a) for a in arrays))

    def _forward(self, *inputs: Any) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        autocast = torch.autocast("cuda", dtype=self._dtype) if self._dtype is not None else None
        with torch.inference_mode(), autocast or contextlib.nullcontext():
            embeddings = self.model.embed(*inputs)
            logits = self.model.classify(embeddings)
        # .cpu() waits for the stream, so the staging buffers are free again when this returns.
        return (
            np.asarray(logits.float().cpu().numpy(), dtype=np.float32),
            np.asarray(embeddings.float().cpu().numpy(), dtype=np.float32),
        )


class PinnedStaging:
    """Page-locked host buffers, allocated once and grown, for host-to-GPU copies of model inputs.

    Pinning a fresh tensor per call (``tensor.pin_memory()``) allocates page-locked memory each
    time: on an H200 that cost 45-70 ms per batch against 4 ms for the forward pass itself
    (benchmarks/results/gpu_check.md). Reused buffers keep the asynchronous copy and lose the cost.
    """

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        self._buffers: list[Any] = [None, None]
        self.lock = threading.Lock()

    def upload(self, device: Any, *arrays: np.ndarray) -> list[Any]:
        """Copy each array into its pinned buffer and start its transfer to ``device``."""
        torch = self._torch
        tensors = []
        for slot, array in enumerate(arrays):
            size = array.size
            source = torch.from_numpy(np.ascontiguousarray(array))
            buffer = self._buffers[slot]
            if buffer is None or buffer.numel() < size or buffer.dtype != source.dtype:
                grown = max(
                    size, 2 * (0 if buffer is None or buffer.dtype != source.dtype else buffer.numel())
                )
                buffer = torch.empty(grown, dtype=source.dtype).pin_memory()
                self._buffers[slot] = buffer
            view = buffer[:size].view(array.shape)
            view.copy_(source)
            tensors.append(view.to(device, non_blocking=True))
        return tensors


class OnnxBackend:
    """The version's ONNX export under ONNX Runtime (CUDA provider when a GPU is used)."""

    name = "onnx"

    def __init__(self, path: os.PathLike[str], device: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def run(self, encoded: Encoded) -> tuple[np.ndarray, np.ndarray]:
        """Logits (n, labels) and embeddings (n, hidden), float32: the graph computes both anyway."""
        logits, embeddings = self.session.run(["logits", "embeddings"], encoded.arrays)
        return np.asarray(logits, dtype=np.float32), np.asarray(embeddings, dtype=np.float32)


def resolve_backend(backend: str, device: str) -> tuple[str, str]:
    """The concrete (backend, device) for the configured values ``auto`` included.

    On CPU ONNX Runtime is the default: `benchmarks/serve_load.py` measured it faster there.
    """
    if device == "auto":
        device = "cuda" if cuda_present() else "cpu"
    if backend == "auto":
        backend = "torch" if device == "cuda" else "onnx"
    return backend, device


def load_backend(version: ModelVersion, backend: str, device: str, threads: int) -> Backend:
    """Build the backend that serves ``version``.

    The ONNX backend reads only the export: the torch weights would cost seconds of a swap, and
    their memory, for nothing.
    """
    if backend in ("onnx", "onnx-int8"):
        int8 = backend == "onnx-int8"
        path = find_export(version, int8=int8)
        if path is None:  # exporting runs torch: only a worker that must export imports it
            from training.onnx_export import ensure_export, ensure_int8_export

            path = ensure_int8_export(version) if int8 else ensure_export(version)
        onnx = OnnxBackend(path, device, threads)
        onnx.name = "onnx-int8" if path.name == QUANTIZED_FILE else "onnx"
        return onnx
    from training.artifacts import load_version_model

    model, _ = load_version_model(version)
    if threads and device == "cpu":
        import torch

        torch.set_num_threads(threads)
    return TorchBackend(model, device)


def limit_numpy_threads(threads: int, device: str) -> None:
    """Give numpy's BLAS one thread on CPU, and the worker's share of the cores on a GPU.

    Its pool otherwise starts a thread per core in every worker, and those threads spin between
    the small products of the request path (open-set distances), taking the cores from the
    model: on 2 cores, 2 workers served 100 images/s with the default pool and 170-186 with one
    thread each. On CPU that holds whatever ``threads`` the model's calls get: one worker whose
    model ran on 2 threads served 85 BANKING77 texts/s at concurrency 1 with BLAS on 2 as well,
    156 with BLAS on 1 (119 and 202 at concurrency 8; `benchmarks/results/serve_load_layouts*`).
    On a GPU the model leaves the cores to the distances.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=max(1, threads) if device.startswith("cuda") else 1, user_api="blas")


def worker_device(device: str) -> str:
    """This worker's device: with several GPUs, worker i (1-based) takes GPU (i - 1) mod count."""
    if device != "cuda":
        return device
    import torch
    from bentoml._internal.context import server_context

    index = (server_context.worker_index or 1) - 1
    return f"cuda:{index % max(1, torch.cuda.device_count())}"
