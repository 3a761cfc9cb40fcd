"""Mosec serving the ONNX model: its dynamic batching (``max_batch_size``, ``max_wait_time``).

POST /classify {"texts": [one text]} -> [{"label", "confidence"}]; GET / answers once up.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosec import Server, Worker
from onnx_text import OnnxTextClassifier, parse_server_args


class Classify(Worker):
    def __init__(self):
        super().__init__()
        self.model = OnnxTextClassifier(os.environ["PEER_SPEC"], int(os.environ["PEER_THREADS"]))

    def forward(self, data):
        # Batched (max_batch_size > 1): a list of request bodies; otherwise one body.
        bodies = data if isinstance(data, list) else [data]
        results = self.model.classify([body["texts"][0] for body in bodies])
        answers = [[result] for result in results]
        return answers if isinstance(data, list) else answers[0]


if __name__ == "__main__":
    args = parse_server_args()
    os.environ["PEER_SPEC"], os.environ["PEER_THREADS"] = args.spec, str(args.threads)
    # Mosec reads its own options from the command line.
    sys.argv = [sys.argv[0], "--address", "127.0.0.1", "--port", str(args.port), "--capacity", "4096"]
    sys.argv += ["--timeout", "60000", "--log-level", "warning"]
    server = Server()
    server.append_worker(
        Classify,
        num=args.workers,
        max_batch_size=args.max_batch_size,
        max_wait_time=int(args.max_wait_ms),
        route="/classify",
    )
    server.run()
