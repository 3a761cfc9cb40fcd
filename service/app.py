"""The Refit BentoML service: the production version of one registered model, behind HTTP.

POST /classify            adaptive batching (BentoML's batchable API); X-Model-Version pins a version;
                          an image model takes base64 JSON or multipart uploads (service/guard.py)
POST /feedback            the true label of a prediction, stored before it is acknowledged
GET  /model               what is serving: version, stage, labels, metrics, lineage, backend
GET  /livez /readyz /metrics   BentoML's, readiness waiting for a loaded, warmed model
"""

from __future__ import annotations

import base64
import logging
import os
import time
from typing import TYPE_CHECKING, Any, cast

import bentoml
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.balance import ConnectionBalance
from service.bentoml_patches import (
    bound_metric_paths,
    log_client_errors_briefly,
    use_greedy_batching,
    use_json_media_type,
)
from service.call_pool import CallPool
from service.guard import IMAGES_PATH, KEY_NAME, RequestGuard, WorkerStatus
from service.heap import freeze_heap, release_free_memory
from service.inference_log import InferenceLog, InferenceLogUnavailable, prediction_records
from service.metrics import initialise_series, observe_predictions, record_swap, service_metrics
from service.model_holder import ModelHolder
from service.openapi import complete_openapi, error_responses
from service.schemas import (
    FeedbackRequest,
    describe_unknown_label,
    describe_validation_errors,
    feedback_request_type,
    image_list_type,
    text_list_type,
)
from service.settings import ServeSettings, load_serve_settings
from training.blobs import BlobStore
from training.errors import ModelLoadError, PinNotAllowedError, VersionLoadingError, VersionNotFoundError
from training.registry import ModelRegistry, ModelVersion

if TYPE_CHECKING:
    from service.predictor import LoadedModel

logger = logging.getLogger(__name__)

# BentoML reads batching limits and resources from the decorators when this module is imported,
# so the settings must be read here; it is only environment variables and an optional file.
SETTINGS = load_serve_settings(resolve_model=False)
Texts = text_list_type(SETTINGS.max_texts, SETTINGS.max_chars)
Images = image_list_type(SETTINGS.max_images)
if TYPE_CHECKING:
    FeedbackBody = FeedbackRequest
else:  # the text limits come from the settings
    FeedbackBody = feedback_request_type(SETTINGS.max_chars)

# Matched as regular expressions anywhere in the URL by OpenTelemetry's ExcludeList.
UNTRACED_ROUTES = ("/classify", "/feedback")  # /classify_images too
# Every path the service answers (tests/test_service_api.py checks it against the OpenAPI document):
# BentoML's (the API, its docs and schema, probes, metrics), then FastAPI's routes and docs.
SERVED_PATHS = (
    *("/", "/classify", "/classify_images", "/docs.json", "/schema.json", "/metrics", "/livez", "/readyz"),
    "/healthz",
    *("/classify_pinned", "/model", "/feedback", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"),
)

# A worker process runs one service instance; the guard in front of it reads its degraded state.
WORKER_STATUS = WorkerStatus()

api = FastAPI(title="Refit", description="Routes beside the batched /classify API.")


class ClassifyRequest(BaseModel):
    """The /classify body of a pinned request: texts, or (for an image model) base64 images."""

    texts: Texts | None = None  # type: ignore[valid-type]
    images: Images | None = None  # type: ignore[valid-type]


@api.exception_handler(StarletteHTTPException)
async def describe_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own errors (a body that is not JSON, ...) in the ``{"error": ...}`` shape of the others."""
    message = str(exc.detail)
    if exc.status_code == 400 and "parsing the body" in message:
        message = "Invalid body: expected a JSON object, found bytes that do not parse as JSON."
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def reject_invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """A 400 for invalid input on FastAPI routes, shaped like BentoML's own validation errors."""
    return JSONResponse(describe_validation_errors(list(exc.errors())), status_code=400)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse({"error": message, **extra}, status_code=status)


def tls_config(settings: ServeSettings) -> dict[str, Any]:
    """BentoML's ``ssl`` service option when a certificate is configured (else nothing)."""
    if settings.ssl_certfile is None or settings.ssl_keyfile is None:
        return {}
    return {
        "ssl": {"enabled": True, "certfile": str(settings.ssl_certfile), "keyfile": str(settings.ssl_keyfile)}
    }


def _resources() -> dict[str, Any]:
    return {"gpu": SETTINGS.gpus} if SETTINGS.gpus else {"cpu": str(os.cpu_count() or 1)}


@bentoml.asgi_app(api, path="/")
@bentoml.service(
    name="refit",
    workers=SETTINGS.worker_count,
    resources=_resources(),
    traffic={"timeout": SETTINGS.timeout_s},
    logging={"access": {"enabled": SETTINGS.access_log}},
    tracing={} if SETTINGS.trace_requests else {"excluded_urls": list(UNTRACED_ROUTES)},
    **tls_config(SETTINGS),
)
class RefitClassifier:
    """Serves the production version of ``REFIT_SERVE_MODEL`` and follows its promotions."""

    def __init__(self) -> None:
        # torch and the model code load here, in the workers: `bentoml serve` imports this module
        # once more in its own process only to read the service's configuration.
        from service.backends import limit_numpy_threads, resolve_backend, worker_device

        # Re-read: runtime settings may differ from import time (tests, a changed environment);
        # only the batching limits and request limits are fixed when the module is imported.
        self.settings = load_serve_settings()
        WORKER_STATUS.degraded = None
        if self.settings.batch_wait == "greedy":
            use_greedy_batching()
        log_client_errors_briefly()
        bound_metric_paths(SERVED_PATHS, prefixes=("/static_content/",))
        self.metrics = service_metrics()
        initialise_series(self.metrics, self.settings.model)
        self.registry = ModelRegistry(self.settings.home)
        self.backend, device = resolve_backend(self.settings.backend, self.settings.device)
        self.device = worker_device(device)
        self.calls = CallPool(self.settings.model_call_count(self.device))
        cores_per_call = (os.cpu_count() or 1) // (self.settings.worker_count * self.calls.size)
        self.threads = self.settings.threads or max(1, cores_per_call)
        limit_numpy_threads(self.threads, self.device)
        self.log = InferenceLog(
            self.settings.resolved_log_url,
            queue_size=self.settings.log_queue_size,
            batch_size=self.settings.log_batch_size,
            flush_ms=self.settings.log_flush_ms,
            retention_days=self.settings.retention_days,
            on_dropped=self.metrics.log_dropped.inc,
            on_written=self.metrics.log_written.inc,
            on_depth=self.metrics.log_queue_depth.set,
            on_reopened=self.metrics.log_reopened.inc,
            images=BlobStore(self.settings.image_store_path),
            images_max_bytes=int(self.settings.image_store_max_mb * 2**20),
        )
        self.holder = ModelHolder(
            self.registry,
            self.settings.model,
            self._load,
            load_pinned=self._load_pinned,
            poll_s=self.settings.swap_poll_s,
            pinned_cache_size=self.settings.pinned_cache_size,
            pinned_load_wait_s=self.settings.pinned_load_wait_s,
            on_swap=lambda old, new: record_swap(self.metrics, old, new),
            on_swap_failure=lambda version, exc: self.metrics.swap_failures.labels(self.settings.model).inc(),
            on_settled=self._settle_heap,
            on_degraded=self._set_degraded,
        )
        self.log.start()
        self.holder.load_production()
        self._settle_heap()
        self.holder.start_watching()

    def _set_degraded(self, reason: str | None) -> None:
        """Say it everywhere: ``/readyz`` (203), ``/model`` and the ``refit_degraded`` gauge."""
        WORKER_STATUS.degraded = reason
        self.metrics.degraded.labels(self.settings.model).set(int(bool(reason)))

    def _load(self, version: ModelVersion, backend: str | None = None) -> LoadedModel:
        from service.predictor import load_model

        # The guard reads and checks requests by what the served model classifies.
        WORKER_STATUS.modality = str(version.manifest.get("modality", "text"))
        return load_model(
            version,
            backend or self.backend,
            self.device,
            self.threads,
            self.settings.top_k,
            self.settings.chunk_size,
            abstain=self.settings.abstain,
            max_padding=self.settings.max_padding,
        )

    def _load_pinned(self, version: ModelVersion) -> LoadedModel:
        from training.onnx_files import read_export_record

        # A version without an ONNX export is served by torch: exporting it would write into the
        # registry on behalf of whoever sent the request.
        record = read_export_record(version)
        if self.backend == "onnx-int8" and record is not None and "int8" not in record:
            return self._load(version, "onnx")
        if self.backend in ("onnx", "onnx-int8") and record is None:
            return self._load(version, "torch")
        return self._load(version)

    def _settle_heap(self) -> None:
        if self.settings.freeze_heap:
            seconds = freeze_heap()
            logger.info("froze the heap after a model change (%.0f ms)", seconds * 1000)
        release_free_memory()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop following promotions and write the queued log records."""
        self.holder.stop()
        self.log.close()
        self.calls.close()

    def __is_ready__(self) -> bool:
        return self.holder.ready

    @bentoml.api(
        route="/classify",
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def classify(self, texts: Texts) -> list[dict[str, Any]]:  # type: ignore[valid-type]
        """Classify texts: label, confidence, top-k, request id, truncation, model and version per text."""
        return self.predict(self.holder.current, texts)

    # Internal: the guard checks image requests and sends them here as base64 (service/guard.py).
    @bentoml.api(
        route=IMAGES_PATH,
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def classify_images(self, images: Images) -> list[dict[str, Any]]:  # type: ignore[valid-type]
        """Classify images (sent to /classify as base64 JSON or multipart files): label,
        confidence, top-k, request id, model and version per image."""
        encoded: list[str] = images
        return self.predict(self.holder.current, [base64.b64decode(image) for image in encoded])

    def predict(self, model: LoadedModel, inputs: list[Any]) -> list[dict[str, Any]]:
        """Run ``model`` on ``inputs`` (texts or image bytes), count them in the metrics and queue
        them for the inference log."""
        start = time.perf_counter()
        predictions = model.classify(inputs, self.calls)
        observe_predictions(self.metrics, model.version.name, inputs, predictions)
        self.log.submit(prediction_records(predictions, inputs, (time.perf_counter() - start) * 1000))
        return [p.to_response() for p in predictions]

    # Internal: the guard sends POST /classify with X-Model-Version here (see service/guard.py).
    @api.post("/classify_pinned", response_model=None, include_in_schema=False)
    def classify_pinned(
        self, body: ClassifyRequest, x_model_version: str = Header(..., description="version to use")
    ) -> list[dict[str, Any]] | JSONResponse:
        """Classify with the version named by ``X-Model-Version`` (not batched with production)."""
        try:
            model = self.holder.get(x_model_version.strip())
        except VersionNotFoundError as exc:
            known = [v.version for v in self.registry.versions(self.settings.model)]
            return error(404, str(exc), versions=known)
        except PinNotAllowedError as exc:
            return error(403, str(exc))
        except VersionLoadingError as exc:
            response = error(503, str(exc))
            response.headers["Retry-After"] = str(exc.retry_after_s)
            return response
        except ModelLoadError as exc:
            return error(503, f"Version {x_model_version} cannot be served: {exc}")
        if model.modality == "image":
            encoded: list[str] = body.images or []
            return self.predict(model, [base64.b64decode(image) for image in encoded])
        if not body.texts:
            return error(400, "Invalid request: texts: expected 1 or more texts to classify.")
        return self.predict(model, body.texts)

    @api.get("/model", responses=error_responses(401, 403, 429))
    def model_info(self) -> dict[str, Any]:
        """The serving version: name, version, stage, labels, metrics, lineage, backend, device."""
        current = self.holder.current
        description = current.describe()
        stages = self.registry.read_stages(self.settings.model)
        description["stage"] = "production" if stages.production == current.version.version else "archived"
        description["production"] = stages.production
        description["degraded"] = self.holder.degraded  # why production is not what serves, or None
        description["log"] = {"queue_depth": self.log.depth, "dropped": self.log.dropped}
        return description

    @api.post(
        "/feedback",
        response_model=None,
        responses=error_responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
    )
    def feedback(self, body: FeedbackBody, request: Request) -> dict[str, Any] | JSONResponse:
        """Store the true label of a prediction; acknowledged only once it is committed."""
        current = self.holder.current
        extra = [*self.settings.feedback_extra_labels, *self.registry.feedback_labels(self.settings.model)]
        allowed = [*current.labels, *(x for x in dict.fromkeys(extra) if x not in current.labels)]
        if body.label not in allowed:
            return error(
                422, describe_unknown_label(body.label, allowed, self.settings.model), allowed_labels=allowed
            )
        text = body.text
        if current.modality == "image":  # an image's label needs the logged image: by request_id
            if not body.request_id:
                return error(
                    422,
                    "This model classifies images: send the request_id of the prediction with the "
                    "label (the service keeps the image); a text cannot stand for an image.",
                )
            text = None
        try:
            source = request.scope.get(KEY_NAME)  # the API key's name, when keys are in use
            record = self.log.feedback_record(self.settings.model, body.label, body.request_id, text, source)
            if record is None:
                return error(
                    404,
                    f"Unknown request_id {body.request_id!r}: no logged prediction has it. "
                    + ("" if current.modality == "image" else "Send the text with the label instead."),
                )
            feedback_id = self.log.record_feedback(record)
        except InferenceLogUnavailable as exc:
            return JSONResponse({"error": f"Feedback not stored: {exc}"}, status_code=503)
        self.metrics.feedback.labels(self.settings.model).inc()
        return {"stored": True, "feedback_id": feedback_id, "request_id": record["request_id"]}


def balance_connections() -> ConnectionBalance | None:
    """This worker's share of the connections, kept even unless ``balance_connections`` is off."""
    settings = load_serve_settings(resolve_model=False)
    return ConnectionBalance.for_this_worker(settings.worker_count) if settings.balance_connections else None


# The decorators return a bentoml Service, which mypy sees as the class.
cast(Any, RefitClassifier).add_asgi_middleware(
    RequestGuard,
    max_body_bytes=SETTINGS.max_body_bytes,
    max_inflight=SETTINGS.max_inflight,
    retry_after_s=SETTINGS.retry_after_s,
    on_reject=lambda reason: service_metrics().rejected.labels(reason).inc(),
    keys_file=lambda: load_serve_settings(resolve_model=False).api_keys_path,
    status=WORKER_STATUS,
    edit_openapi=complete_openapi,
    image_limits=SETTINGS.image_request_limits(),
    max_image_body_bytes=SETTINGS.max_image_body_bytes,
    max_latency_ms=SETTINGS.max_latency_ms,
    balance=balance_connections,
)
use_json_media_type(RefitClassifier, "classify")
use_json_media_type(RefitClassifier, "classify_images")
