"""The service's Prometheus metrics, beside BentoML's built-in request and batching metrics.

They are created on first use, inside the worker: BentoML sets ``PROMETHEUS_MULTIPROC_DIR``
when a worker starts, and a metric created before that would be invisible on ``/metrics``.
Label values are bounded: model names, a version's labels, and fixed reason strings.
"""

from __future__ import annotations

import functools
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from service.predictor import LoadedModel, Prediction

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LENGTH_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class ServiceMetrics:
    """Every metric the service exports under the ``refit_`` prefix."""

    predictions: Counter
    confidence: Histogram
    input_chars: Histogram
    truncated: Counter
    out_of_scope: Counter
    batch_texts: Histogram
    model_info: Gauge
    swaps: Counter
    degraded: Gauge
    swap_failures: Counter
    log_queue_depth: Gauge
    log_dropped: Counter
    log_written: Counter
    log_reopened: Counter
    feedback: Counter
    rejected: Counter


@functools.cache
def service_metrics() -> ServiceMetrics:
    """The process's metrics, created once."""
    return ServiceMetrics(
        predictions=Counter(
            "refit_predictions", "Predictions served, by predicted label.", ["model", "label"]
        ),
        confidence=Histogram(
            "refit_prediction_confidence",
            "Top-1 probability of each prediction.",
            ["model"],
            buckets=CONFIDENCE_BUCKETS,
        ),
        input_chars=Histogram(
            "refit_input_length_chars",
            "Length of each classified text in characters.",
            ["model"],
            buckets=LENGTH_BUCKETS,
        ),
        out_of_scope=Counter(
            "refit_out_of_scope_texts",
            "Texts the version scored out of scope (answered label null where abstaining is on).",
            ["model"],
        ),
        truncated=Counter(
            "refit_truncated_texts", "Texts cut to the model's maximum number of tokens.", ["model"]
        ),
        batch_texts=Histogram(
            "refit_batch_texts",
            "Texts per model call after adaptive batching.",
            ["model"],
            buckets=BATCH_BUCKETS,
        ),
        model_info=Gauge(
            "refit_model_info",
            "1 for the version a worker serves as production, else 0.",
            ["model", "version", "backend", "device"],
            multiprocess_mode="max",
        ),
        swaps=Counter("refit_model_swaps", "Hot swaps to a newly promoted version.", ["model"]),
        degraded=Gauge(
            "refit_degraded",
            "1 while a worker serves an earlier version because production cannot be loaded, else 0.",
            ["model"],
            multiprocess_mode="livemax",
        ),
        swap_failures=Counter(
            "refit_model_swap_failures", "Promoted versions that could not be loaded.", ["model"]
        ),
        log_queue_depth=Gauge(
            "refit_payload_log_queue_depth",
            "Prediction records waiting to be written.",
            multiprocess_mode="livesum",
        ),
        log_dropped=Counter("refit_payload_log_dropped", "Prediction records dropped, not written."),
        log_written=Counter("refit_payload_log_written", "Prediction records written to the log."),
        log_reopened=Counter(
            "refit_payload_log_reopened",
            "Times the log's SQLite file was found removed or replaced and reopened.",
        ),
        feedback=Counter("refit_feedback", "Feedback labels stored.", ["model"]),
        rejected=Counter(
            "refit_rejected_requests", "Requests refused before reaching the model.", ["reason"]
        ),
    )


REJECT_REASONS = (
    "body_too_large",
    "invalid_image",
    "overloaded",
    "unsupported_media_type",
    "unauthenticated",
    "forbidden",
    "rate_limited",
)


def initialise_series(metrics: ServiceMetrics, model: str) -> None:
    """Create every counter series of ``model`` at zero.

    A labelled counter has no series until first incremented, so before its first swap failure
    `rate(refit_model_swap_failures_total[5m])` would be empty rather than 0, and a dashboard or an
    alert could not tell "none" from "not exported".
    """
    for counter in (
        metrics.swaps,
        metrics.swap_failures,
        metrics.truncated,
        metrics.out_of_scope,
        metrics.feedback,
    ):
        counter.labels(model)
    for reason in REJECT_REASONS:
        metrics.rejected.labels(reason)
    metrics.degraded.labels(model).set(0)


def observe_predictions(
    metrics: ServiceMetrics, model: str, inputs: Sequence[Any], predictions: Sequence[Prediction]
) -> None:
    """Count one model call: batch size, labels, confidences, text lengths, out-of-scope and
    truncated texts."""
    metrics.batch_texts.labels(model).observe(len(inputs))
    for label, count in Tally(p.label for p in predictions).items():
        metrics.predictions.labels(model, label).inc(count)
    confidence, chars = metrics.confidence.labels(model), metrics.input_chars.labels(model)
    for p, item in zip(predictions, inputs, strict=True):
        confidence.observe(p.confidence)
        if isinstance(item, str):
            chars.observe(len(item))
    out_of_scope = sum(p.in_scope is False for p in predictions)
    if out_of_scope:
        metrics.out_of_scope.labels(model).inc(out_of_scope)
    truncated = sum(p.truncated for p in predictions)
    if truncated:
        metrics.truncated.labels(model).inc(truncated)


def record_swap(metrics: ServiceMetrics, old: LoadedModel | None, new: LoadedModel) -> None:
    """Move ``refit_model_info`` to the new version and count the swap (not the first load)."""
    info = metrics.model_info
    if old is not None:
        info.labels(old.version.name, old.version.version, old.backend.name, old.backend.device).set(0)
        metrics.swaps.labels(new.version.name).inc()
    info.labels(new.version.name, new.version.version, new.backend.name, new.backend.device).set(1)
