"""The model every serving peer serves: a Refit version's ONNX export and tokenizer, run as Refit runs them.

The benchmark writes a ``served.json`` spec (the ONNX file, the tokenizer folder, the labels, the
maximum length); each peer's server script puts this folder on ``sys.path`` and imports this
module under its own interpreter. Only onnxruntime, transformers (the tokenizer) and numpy are
needed, pinned in every serving peer's requirements to Refit's versions, so that the peers differ
from Refit only in how they serve.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


class OnnxTextClassifier:
    """Texts -> [{"label", "confidence"}], tokenised and run exactly as Refit's ONNX backend does."""

    def __init__(self, spec_path: str, threads: int) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        spec = json.loads(Path(spec_path).read_text())
        self.labels: list[str] = spec["labels"]
        self.max_length = int(spec["max_length"])
        self.tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(spec["onnx"], options, providers=["CPUExecutionProvider"])

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """Softmax of the logits, (n, labels)."""
        enc = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="np"
        )
        inputs = {name: np.asarray(enc[name], dtype=np.int64) for name in ("input_ids", "attention_mask")}
        (logits,) = self.session.run(["logits"], inputs)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        """The best label and its probability for each text."""
        probs = self.probabilities(texts)
        best = probs.argmax(axis=1)
        return [
            {"label": self.labels[int(i)], "confidence": float(p[i])}
            for i, p in zip(best, probs, strict=True)
        ]


def parse_server_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments every peer's server takes: the model spec, the port and the batching knobs."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True, help="served.json written by the benchmark")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="model processes (or replicas)")
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime threads per worker; 0: its default"
    )
    return parser.parse_args(argv)
