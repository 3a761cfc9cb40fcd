"""NVIDIA Triton Inference Server (through PyTriton) serving the ONNX model, dynamic batching on.

Triton speaks the KServe v2 protocol: POST /v2/models/classifier/infer with a BYTES input
``texts`` of shape [1, 1]; outputs ``label`` (BYTES) and ``confidence`` (FP32). Ready once
GET /v2/models/classifier/ready answers 200.
"""

from __future__ import annotations

import os
import socket
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from onnx_text import OnnxTextClassifier, parse_server_args
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_infer(model: OnnxTextClassifier):
    @batch
    def infer(texts: np.ndarray) -> dict[str, np.ndarray]:
        results = model.classify([row[0].decode("utf-8") for row in texts])
        labels = np.array([[r["label"].encode("utf-8")] for r in results], dtype=np.bytes_)
        confidences = np.array([[r["confidence"]] for r in results], dtype=np.float32)
        return {"label": labels, "confidence": confidences}

    return infer


if __name__ == "__main__":
    args = parse_server_args()
    # Triton's Python backend stub loads libpython from this interpreter's library folder.
    library = sysconfig.get_config_var("LIBDIR")
    paths = [library, os.environ.get("LD_LIBRARY_PATH")]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.port,
        grpc_address="127.0.0.1",
        grpc_port=free_port(),
        metrics_port=free_port(),
        allow_metrics=False,
    )
    # One model instance per worker, each with its own session (Triton runs instances in parallel).
    infers = [make_infer(OnnxTextClassifier(args.spec, args.threads)) for _ in range(args.workers)]
    with Triton(config=config) as triton:
        triton.bind(
            model_name="classifier",
            infer_func=infers,
            inputs=[Tensor(name="texts", dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name="label", dtype=bytes, shape=(1,)),
                Tensor(name="confidence", dtype=np.float32, shape=(1,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(args.max_wait_ms * 1000)),
            ),
            strict=False,
        )
        triton.serve()
