"""One loaded, warmed model version and how it turns inputs (texts, images) into predictions."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.backends import Backend, encode_inputs, load_backend
from service.call_pool import SEQUENTIAL, CallPool, split_batch
from training.artifacts import load_version_processor, read_labels, read_metrics
from training.errors import ModelLoadError
from training.open_set import OpenSet, load_open_set
from training.probabilities import softmax
from training.processors import Processor, TextProcessor
from training.registry import ModelVersion

logger = logging.getLogger(__name__)

# Padded tokens over real ones a model call may add on a CPU, where a padded token costs as much as
# a real one. On BANKING77, one model thread: chunks of 8 sorted by length alone carried 1.26-1.31
# tokens per real one in batches of 32 texts, and a batch of 8 texts 1.7; cutting at 10% left
# 1.04-1.05, for 1.5-1.6x the texts/s at 8 texts per batch and 1.0-1.4x at 32 (cuts at 0 and 20%
# measured within noise of 10%). A GPU keeps its big calls: no limit there.
CPU_MAX_PADDING = 0.1
WARMUP_TEXTS = ["warm up the model", "a second, somewhat longer text to warm up with padding"]


def warmup_inputs(processor: Processor) -> list[Any]:
    """Two inputs of the processor's kind: texts of two lengths, or two small PNG images."""
    if isinstance(processor, TextProcessor):
        return list(WARMUP_TEXTS)
    import io

    from PIL import Image

    images = []
    for shade in (64, 192):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (shade, shade, shade)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


@dataclass
class Prediction:
    """The answer for one input."""

    request_id: str
    label: str
    confidence: float
    top_k: list[dict[str, Any]]  # [{"label", "probability"}], most probable first
    probabilities: np.ndarray  # (labels,) float32, for the payload log
    truncated: bool
    model: str
    version: str
    unknown_score: float | None = None  # open-set score; None for a version without calibration
    in_scope: bool | None = None  # False: the version would abstain (score over its threshold)
    abstain: bool = False  # answer ``label: null`` (the best guess beside it) when not in scope

    def to_response(self) -> dict[str, Any]:
        """The JSON object returned to the client."""
        abstained = self.abstain and self.in_scope is False
        response = {
            "request_id": self.request_id,
            "label": None if abstained else self.label,
            "confidence": round(self.confidence, 6),
            "top_k": self.top_k,
            "truncated": self.truncated,
            "model": self.model,
            "version": self.version,
            "in_scope": self.in_scope,
            "unknown_score": None if self.unknown_score is None else round(self.unknown_score, 4),
        }
        if abstained:
            response["best_guess"] = self.label
        return response


@dataclass
class LoadedModel:
    """A version with its backend, labels and metadata, ready to classify."""

    version: ModelVersion
    backend: Backend
    processor: Processor
    labels: list[str]
    metrics: dict[str, Any]
    top_k: int = 3
    chunk_size: int = 64
    max_padding: float | None = None  # padded tokens over real ones a model call may add
    open_set: tuple[OpenSet, np.ndarray] | None = None  # calibration and training embeddings
    abstain: bool = False  # answer label null when an input is out of scope
    loaded_at: float = field(default_factory=time.time)

    @property
    def modality(self) -> str:
        """``text`` or ``image``, as the version recorded it."""
        return str(self.version.manifest.get("modality", "text"))

    def classify(self, inputs: list[Any], calls: CallPool = SEQUENTIAL) -> list[Prediction]:
        """Predictions for ``inputs`` (texts, or checked image bytes) in order.

        Inputs are encoded once, in this thread (a fast tokenizer shared between threads can
        refuse a call: "Already borrowed"); texts of similar length then share a model call
        (``service.call_pool.split_batch``), and the calls run ``calls.size`` at once.
        """
        if not inputs:
            return []
        encoded = encode_inputs(self.processor, inputs)
        parts = split_batch(encoded.sizes(), self.chunk_size, calls.size, self.max_padding)
        outputs = calls.map(self.backend.run, [encoded.take(idx) for idx in parts])
        probs = np.zeros((len(inputs), len(self.labels)), dtype=np.float32)
        embeddings = np.zeros((len(inputs), outputs[0][1].shape[1]), dtype=np.float32)
        for idx, (part_logits, part_embeddings) in zip(parts, outputs, strict=True):
            probs[idx], embeddings[idx] = softmax(part_logits), part_embeddings
        scores = np.full(len(inputs), np.nan, dtype=np.float32)
        if self.open_set is not None:  # one pass over the training embeddings for the whole batch
            scores = self.open_set[0].scores(probs, embeddings, self.open_set[1], unit_reference=True)
        return [
            self._describe(p, float(s), bool(t))
            for p, s, t in zip(probs, scores, encoded.truncated, strict=True)
        ]

    def _describe(self, probabilities: np.ndarray, score: float, truncated: bool) -> Prediction:
        k = min(self.top_k, len(self.labels))
        best = np.argsort(-probabilities, kind="stable")[:k]
        label = self.labels[int(best[0])]
        in_scope = None
        if self.open_set is not None:
            calibration = self.open_set[0]
            in_scope = score < calibration.threshold and label != calibration.oos_label
            if calibration.oos_label is not None and label == calibration.oos_label:
                # The best guess is the best in-scope label.
                label = next(
                    self.labels[int(i)] for i in np.argsort(-probabilities) if self.labels[int(i)] != label
                )
        return Prediction(
            request_id=uuid.uuid4().hex,
            label=label,
            confidence=float(probabilities[best[0]]),
            top_k=[
                {"label": self.labels[int(i)], "probability": round(float(probabilities[i]), 6)} for i in best
            ],
            probabilities=probabilities,
            truncated=truncated,
            model=self.version.name,
            version=self.version.version,
            unknown_score=None if np.isnan(score) else score,
            in_scope=in_scope,
            abstain=self.abstain,
        )

    def warm_up(self) -> None:
        """Run two small batches so the first request does not pay for lazy initialisation."""
        for _ in range(2):
            self.classify(warmup_inputs(self.processor))

    def describe(self) -> dict[str, Any]:
        """What GET /model returns."""
        manifest = self.version.manifest
        return {
            "name": self.version.name,
            "version": self.version.version,
            "stage": self.version.stage,
            "labels": self.labels,
            "metrics": {split: _headline(self.metrics.get(split)) for split in ("test", "validation")},
            "lineage": {
                "parent_version": manifest.get("parent_version"),
                "strategy": manifest.get("strategy"),
                "base_model": manifest.get("base_model"),
                "data_fingerprint": manifest.get("data_fingerprint"),
                "created": manifest.get("created"),
            },
            "backend": self.backend.name,
            "device": self.backend.device,
            "modality": self.modality,
            "max_length": getattr(self.processor, "max_length", None),
            "image_size": getattr(getattr(self.processor, "preprocessing", None), "size", None),
            "open_set": None
            if self.open_set is None
            else {
                "threshold": self.open_set[0].threshold,
                "oos_label": self.open_set[0].oos_label,
                "abstaining": self.abstain,
                "validation_abstain_rate": self.open_set[0].validation_abstain_rate,
                "reference_rows": len(self.open_set[1]),  # what each request's distance reads
            },
        }


def _headline(result: Any) -> dict[str, Any] | None:
    """The summary numbers of an EvaluationResult dict."""
    if not isinstance(result, dict):
        return None
    keys = ("accuracy", "macro_f1", "ece", "n")
    return {k: result[k] for k in keys if k in result}


def load_model(
    version: ModelVersion,
    backend: str,
    device: str,
    threads: int,
    top_k: int,
    chunk_size: int = 0,
    abstain: bool = False,
    max_padding: float | None = None,
) -> LoadedModel:
    """Load ``version`` on the chosen backend and warm it up.

    Raises:
        ModelLoadError: files are missing or corrupt, or the warm-up fails.
    """
    start = time.perf_counter()
    on_gpu = device.startswith("cuda")
    try:
        loaded = LoadedModel(
            version=version,
            backend=load_backend(version, backend, device, threads),
            processor=load_version_processor(version),
            labels=read_labels(version),
            metrics=read_metrics(version),
            top_k=top_k,
            # Small length-sorted chunks waste little on padding, which is what costs on a CPU
            # (8 vs 64: 1.3-2x texts/s on BANKING77); a GPU wants big calls.
            chunk_size=chunk_size or (64 if on_gpu else 8),
            max_padding=CPU_MAX_PADDING if max_padding is None and not on_gpu else max_padding,
            open_set=load_open_set(version.path),
            abstain=abstain,
        )
        loaded.warm_up()
    except ModelLoadError:
        raise
    except Exception as exc:  # a corrupt file surfaces as many exception types
        raise ModelLoadError(f"Version {version.tag} cannot be served: {type(exc).__name__}: {exc}") from exc
    logger.info(
        "loaded %s (%s on %s) in %.1f s",
        version.tag,
        loaded.backend.name,
        loaded.backend.device,
        time.perf_counter() - start,
    )
    return loaded
