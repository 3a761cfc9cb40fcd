"""Ray Serve serving the ONNX model: ``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s``).

POST /classify {"texts": [one text]} -> [{"label", "confidence"}]; GET /readyz answers once the
deployment is up.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment
class Classifier:
    def __init__(self, folder: str, spec: str, threads: int, max_batch_size: int, wait_s: float) -> None:
        sys.path.insert(0, folder)
        from onnx_text import OnnxTextClassifier

        self.model = OnnxTextClassifier(spec, threads)
        self.classify_batch.set_max_batch_size(max_batch_size)
        self.classify_batch.set_batch_wait_timeout_s(wait_s)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
    async def classify_batch(self, texts: list[str]) -> list[dict]:
        return self.model.classify(texts)

    async def __call__(self, request: Request):
        if request.url.path.endswith("/readyz"):
            return {"ready": True}
        body = await request.json()
        return [await self.classify_batch(body["texts"][0])]


if __name__ == "__main__":
    from onnx_text import parse_server_args

    args = parse_server_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    deployment = Classifier.options(
        num_replicas=args.workers,
        # Ray's default of 5 requests in flight per replica would cap every batch at 5.
        max_ongoing_requests=max(args.max_batch_size * 2, 8),
        ray_actor_options={"num_cpus": 0},
    )
    folder = str(Path(__file__).resolve().parents[1])
    app = deployment.bind(folder, args.spec, args.threads, args.max_batch_size, args.max_wait_ms / 1000)
    serve.run(app, route_prefix="/")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    serve.shutdown()
    ray.shutdown()
