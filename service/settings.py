"""The serving stage's one typed config: ``REFIT_SERVE_*`` variables over an optional file.

The file is named by ``REFIT_SERVE_CONFIG`` (YAML or TOML), because ``bentoml serve`` takes no
application arguments: the environment is how a deployment configures each replica.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from service.image_requests import ImageRequestLimits
from training.images import ImageLimits
from training.shared_settings import ServedModelSettings, load_settings

CONFIG_ENV = "REFIT_SERVE_CONFIG"


class ServeSettings(ServedModelSettings):
    """Everything one service replica needs."""

    model_config = SettingsConfigDict(env_prefix="REFIT_SERVE_", extra="forbid")

    # auto: onnx on CPU, torch on CUDA; onnx-int8: the int8 export (`refit models export
    # --quantize`, made at load if missing), float ONNX where int8 lost more than 1 point
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    gpus: int = Field(0, ge=0)  # GPUs to ask BentoML for (resources={"gpu": n}); one worker each
    # worker processes; None: one per GPU of `gpus`, one on CUDA without `gpus`, one per core
    # on CPU (at most 4)
    workers: int | None = Field(None, ge=1)
    # threads per model call (numpy's BLAS gets 1 on CPU); 0: cores / (workers x calls)
    threads: int = Field(0, ge=0)
    # model calls one worker runs at once, each on part of a batch; 0: the worker's share of the
    # cores on CPU (cores / workers, at least 1), 1 on CUDA (see service/call_pool.py)
    model_calls: int = Field(0, ge=0)
    # close a connection now and then on a worker holding more than its share of the clients'
    # keep-alive connections, so that they spread over the workers (see service/balance.py)
    balance_connections: bool = True
    max_batch_size: int = Field(64, ge=2)  # BentoML adaptive batching: texts per model call
    max_latency_ms: int = Field(1000, ge=1)  # batching SLO: predicted to exceed it -> 503
    batch_wait: Literal["greedy", "adaptive"] = "greedy"  # see service/bentoml_patches.py
    chunk_size: int = Field(0, ge=0)  # texts per model call after length sorting; 0: 8 on CPU, 64 on CUDA
    # padded tokens over real ones a model call may add (service/call_pool.py); None: 0.1 on CPU,
    # no limit on CUDA
    max_padding: float | None = Field(None, ge=0)
    max_texts: int = Field(64, ge=1)  # texts per /classify request
    max_chars: int = Field(4000, ge=1)  # characters per text; longer is a 4xx, not a silent cut
    max_body_bytes: int = Field(1_000_000, ge=1024)  # request bodies over this get a 413
    # Image models: images per request, bytes per image and per request body, pixels per image
    # and the least side; beyond them a 4xx names the image (see service/image_requests.py).
    max_images: int = Field(16, ge=1)
    max_image_bytes: int = Field(10_000_000, ge=1024)
    max_image_body_bytes: int = Field(64_000_000, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    min_image_side: int = Field(32, ge=1)
    image_store_max_mb: float = Field(10_000.0, gt=0)  # the oldest images go first beyond it
    max_inflight: int = Field(512, ge=1)  # /classify requests in flight before a 503 + Retry-After
    retry_after_s: int = Field(1, ge=1)  # the Retry-After of a 503 for overload
    top_k: int = Field(3, ge=1)  # labels with probabilities in each answer
    # Answer `label: null` (and `best_guess`) for texts the version scores out of scope. Off: every
    # answer keeps its label, with `in_scope` and `unknown_score` beside it.
    abstain: bool = False
    timeout_s: int = Field(60, ge=1)  # BentoML request timeout
    log_queue_size: int = Field(10_000, ge=1)  # prediction records waiting for the writer
    log_batch_size: int = Field(500, ge=1)  # records per INSERT
    log_flush_ms: int = Field(200, ge=1)  # the writer's longest wait before writing a partial batch
    retention_days: float = Field(30.0, gt=0)  # older predictions and feedback are deleted
    swap_poll_s: float = Field(1.0, gt=0, le=10)  # how often the registry's stages are read
    pinned_cache_size: int = Field(2, ge=1)  # versions pinned with X-Model-Version kept loaded
    # A request pinned to a version not loaded yet waits this long, then gets a 503 + Retry-After
    # while the load (and an ONNX export, if the version has none) goes on in the background.
    pinned_load_wait_s: float = Field(5.0, ge=0)
    feedback_extra_labels: list[str] = Field(default_factory=list)  # labels not yet in the model
    # BentoML's line per request. Off by default: the inference log already records every
    # prediction (id, time, latency), and the line cost 6-10% of the throughput at concurrency 32.
    access_log: bool = False
    # OpenTelemetry spans for the API routes. Off by default: without an exporter configured they
    # are created and dropped, at ~5% of a worker's CPU under load (py-spy).
    trace_requests: bool = False
    # gc.freeze() after each model load (service/heap.py): full collections then skip the
    # model's objects instead of pausing the worker 270-320 ms every 20-30 s under load.
    freeze_heap: bool = True
    host: str = "127.0.0.1"  # address to listen on; 0.0.0.0 only behind a network boundary
    # API keys (`refit keys create`); None: <registry home>/refit/api-keys.json. With at least one
    # key, every route but the probes, metrics and docs needs one.
    api_keys_file: Path | None = None
    insecure: bool = False  # allow a non-loopback host without API keys (`refit serve --insecure`)
    ssl_certfile: Path | None = None  # TLS certificate (PEM); with ssl_keyfile the service speaks HTTPS
    ssl_keyfile: Path | None = None  # the certificate's private key (PEM)
    port: int = Field(3000, ge=1, le=65535)  # port to listen on

    @model_validator(mode="after")
    def _check_tls(self) -> ServeSettings:
        given = [name for name in ("ssl_certfile", "ssl_keyfile") if getattr(self, name) is not None]
        if len(given) == 1:
            raise ValueError(f"TLS needs both ssl_certfile and ssl_keyfile; found only {given[0]}")
        missing = [str(getattr(self, name)) for name in given if not getattr(self, name).is_file()]
        if missing:
            raise ValueError(f"TLS files not found: {', '.join(missing)}; expected PEM files")
        return self

    @property
    def api_keys_path(self) -> Path:
        """The API keys file the service reads."""
        return self.api_keys_file or self.home / "refit" / "api-keys.json"

    def image_request_limits(self) -> ImageRequestLimits:
        """What one image request may carry."""
        image = ImageLimits(min_side=self.min_image_side, max_pixels=self.max_image_pixels)
        return ImageRequestLimits(self.max_images, self.max_image_bytes, image)

    @property
    def scheme(self) -> str:
        """``https`` with a certificate, else ``http``."""
        return "https" if self.ssl_certfile else "http"

    @model_validator(mode="after")
    def _check_batching(self) -> ServeSettings:
        for key in ("max_texts", "max_images"):
            if getattr(self, key) > self.max_batch_size:
                raise ValueError(
                    f"{key} ({getattr(self, key)}) must not exceed max_batch_size ({self.max_batch_size}): "
                    "one request's inputs always go to the model in one batch"
                )
        return self

    def model_call_count(self, device: str) -> int:
        """Model calls one worker runs at once on ``device``: as configured; one on CUDA; else the
        worker's share of the cores, so that the workers' calls together use each core once.

        A call per core in every worker put 4 single-threaded calls on 2 cores: side by side in
        four runs (`benchmarks/results/serve_load_calls*.md`, README), one call per worker served
        more texts/s at concurrency 8 in all four and had the lower p99 at 32 and 64 in all four
        (more texts/s at 32 in three, at 64 in two). A lone worker (``workers: 1``) still gets a
        call per core.
        """
        if self.model_calls:
            return self.model_calls
        if device.startswith("cuda"):
            return 1
        return max(1, (os.cpu_count() or 1) // self.worker_count)

    @property
    def worker_count(self) -> int:
        """Worker processes: as configured; else one per GPU of ``gpus`` (one on CUDA without
        ``gpus``); on CPU one per core, at most 4.

        On CPU, single-threaded workers side by side beat one worker whose model uses every core
        once the service is loaded (as TorchServe's default of one worker per core assumes): on 2
        cores, 299 vs 266 requests/s at concurrency 32 and 346 vs 254 at 64, one text per request.
        One worker answers a lone request sooner (5.5 vs 7.7 ms) and wins up to concurrency 8
        (207 vs 161): set ``workers: 1`` for a lightly loaded, latency-bound replica. Each worker
        holds its own copy of the model, hence the cap.
        """
        if self.workers:
            return self.workers
        if self.gpus or (self.device != "cpu" and cuda_present()):
            return max(1, self.gpus)
        return max(1, min(os.cpu_count() or 1, MAX_CPU_WORKERS))


MAX_CPU_WORKERS = 4  # default worker processes on CPU at most (each loads the model)


def cuda_present() -> bool:
    """Whether torch sees a GPU (``device: auto`` then serves on it, with one worker per GPU)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        # No NVIDIA driver to load, so torch would find no GPU either. `bentoml serve` reads the
        # worker count in its own process, which then need not import torch (1.5 s here) at all.
        return False
    import torch

    return bool(torch.cuda.is_available())


def load_serve_settings(
    path: Path | None = None, overrides: dict[str, object] | None = None, *, resolve_model: bool = True
) -> ServeSettings:
    """Settings from ``path`` (or the file named by ``REFIT_SERVE_CONFIG``), the environment and overrides.

    Args:
        path: optional YAML or TOML file.
        overrides: values that win over everything else (CLI flags).
        resolve_model: with no model named, serve the registry's only model (reads the registry).

    Raises:
        ConfigError: an unknown key, an unreadable file, an invalid value, or no model named in a
            registry of several.
    """
    settings = load_settings(ServeSettings, path, dict(overrides or {}), CONFIG_ENV)
    return settings.with_default_model() if resolve_model else settings
