"""LitServe serving the ONNX model: its dynamic batching (``max_batch_size``, ``batch_timeout``).

POST /classify {"texts": [one text]} -> [{"label", "confidence"}]; GET /health answers once ready.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import litserve as ls
from onnx_text import OnnxTextClassifier, parse_server_args

ARGS = parse_server_args()


class TextAPI(ls.LitAPI):
    def setup(self, device):
        self.model = OnnxTextClassifier(ARGS.spec, ARGS.threads)

    def decode_request(self, request):
        return request["texts"][0]

    def predict(self, texts):
        # Batched: a list of texts; unbatched (max_batch_size 1): one text.
        return self.model.classify(list(texts) if isinstance(texts, list) else [texts])

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return output if isinstance(output, list) else [output]


if __name__ == "__main__":
    api = TextAPI(
        max_batch_size=ARGS.max_batch_size, batch_timeout=ARGS.max_wait_ms / 1000, api_path="/classify"
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=ARGS.workers)
    server.run(host="127.0.0.1", port=ARGS.port, generate_client_file=False)
