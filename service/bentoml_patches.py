"""Every change Refit makes to BentoML's internals, why each is needed, and a check that it still applies.

BentoML ``>=1.4.37,<1.5`` exposes no setting for any behaviour below, so Refit changes four
internal objects. Each function checks that what it changes still exists and raises
:class:`BentoMLPatchError` otherwise; ``tests/test_bentoml_patches.py`` runs each against the
installed BentoML, so an upgrade that removes or renames them fails the suite loudly instead of
silently serving with the old behaviour.

1. **Greedy batching** (``use_greedy_batching``). BentoML's CorkDispatcher holds a request back
   for about the average wait of recent batches, hoping for a bigger batch. That average includes
   the time requests spent queued behind a busy model, so after a burst every lone request is
   held for about one batch duration, and the average decays only ~5% per 50 batches: measured
   here, single-request latency went from 6.5 ms on a fresh server to 83-136 ms after 6 s at
   concurrency 32, for minutes. Greedy records every wait as zero, so the dispatcher releases a
   batch as soon as the model is free and batches form from what queued during the previous call
   (the policy of Triton's dynamic batcher with no queue delay). Its latency shedding (503 when a
   request would miss ``max_latency_ms``) is unchanged. The dispatcher's controller is replaced by
   one woken by events (a request arrives, a batch ends, the oldest request's deadline): BentoML's
   polls its queue every millisecond while the model is busy, and under load its polls were 13% of
   a worker's samples holding the GIL (py-spy); without them, 12-15% more texts/s at concurrency 8
   and 7-18% at 32, side by side on 2 cores.
   ``batch_wait: adaptive`` keeps BentoML's.
2. **Client errors logged as one line** (``log_client_errors_briefly``). BentoML logs every request
   it rejects, a 4xx included, as an ERROR with the exception's traceback, and a pydantic
   traceback quotes the input: a client's text landed in the log (1.9 KB per 40-byte request).
   A filter on BentoML's logger turns a client error into one INFO line without the input; so is
   a request the dispatcher sheds under load (a ``ServiceUnavailable`` traceback per shed request
   buried the log); a server error keeps its traceback.
3. **Bounded metric labels** (``bound_metric_paths``). BentoML labels its HTTP metrics with the
   request path, so every unknown URL a scanner tries adds series to ``/metrics`` (300 random
   paths took it from 108 KB to 1.18 MB). Paths no route serves share one label, ``/{unknown}``;
   the request still reaches the router with its own path (``service/guard.py`` restores it).
4. **A fixed JSON media type** (``use_json_media_type``). BentoML derives the response media type
   from the output's JSON schema, rebuilding a pydantic TypeAdapter on every response: ~5% of a
   worker's CPU under load, measured with py-spy. The answer is always JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Collection
from typing import Any

logger = logging.getLogger(__name__)

ORIGINAL_MARK = "_refit_original"  # a patched method keeps BentoML's under this attribute


class BentoMLPatchError(RuntimeError):
    """The installed BentoML no longer has what a patch changes; the message says what is missing."""


def _optimizer() -> Any:
    try:
        from bentoml._internal.marshal.dispatcher import Optimizer
    except ImportError as exc:
        raise BentoMLPatchError(
            f"greedy batching expected bentoml._internal.marshal.dispatcher.Optimizer, found none: {exc}"
        ) from exc
    method = getattr(Optimizer, "log_outbound", None)
    parameters = set(inspect.signature(method).parameters) if callable(method) else set()
    if not {"n", "wait", "duration"} <= parameters:
        raise BentoMLPatchError(
            "greedy batching expected Optimizer.log_outbound(self, n, wait, duration), found "
            f"{sorted(parameters) or 'no such method'}; set batch_wait: adaptive until Refit is updated"
        )
    return Optimizer


# What the event-driven controller reads and calls on BentoML's CorkDispatcher, with its parameters.
DISPATCHER_METHODS = {
    "controller": ["self"],
    "outbound_call": ["self", "inputs_info", "training"],
    "train_optimizer": ["self", "num_required_reqs", "num_reqs_to_train", "training_batch_size"],
    "_get_inputs": ["self", "num_batches"],
}
DISPATCHER_ATTRIBUTES = ("_wake_event", "_loop")  # cached properties of the class


def _dispatcher() -> Any:
    try:
        from bentoml._internal.marshal.dispatcher import CorkDispatcher
    except ImportError as exc:
        raise BentoMLPatchError(
            f"greedy batching expected bentoml._internal.marshal.dispatcher.CorkDispatcher: {exc}"
        ) from exc
    for name, expected in DISPATCHER_METHODS.items():
        method = getattr(CorkDispatcher, name, None)
        found = list(inspect.signature(method).parameters) if callable(method) else None
        if found != expected:
            raise BentoMLPatchError(
                f"greedy batching expected CorkDispatcher.{name}({', '.join(expected)}), found "
                f"{found or 'no such method'}; set batch_wait: adaptive until Refit is updated"
            )
    missing = [name for name in DISPATCHER_ATTRIBUTES if not hasattr(CorkDispatcher, name)]
    if missing:
        raise BentoMLPatchError(f"greedy batching expected CorkDispatcher.{missing[0]}, found none")
    return CorkDispatcher


async def train_latency_model(dispatcher: Any) -> None:
    """BentoML's first batches, of 1, 2 and 3 requests, which fit the latency model (seconds per
    batch = a x requests + b) its load shedding predicts with; the same calls its controller makes."""
    await dispatcher.train_optimizer(
        dispatcher.optimizer.N_SKIPPED_SAMPLE, dispatcher.optimizer.N_SKIPPED_SAMPLE + 6, 1
    )
    for required, size in ((6, 1), (5, 2), (3, 3)):
        await dispatcher.train_optimizer(required, 1, size)
        dispatcher.optimizer.trigger_refresh()


def shed_or_wait_s(dispatcher: Any, busy: bool) -> float | None:
    """Shed the oldest queued request if it would miss ``max_latency`` (BentoML's rule) and return
    0; else, while the model is ``busy``, the seconds until it would, or None: dispatch the queue."""
    queue = dispatcher._queue
    waited = time.time() - queue[0].enqueue_time
    predicted = waited + dispatcher.optimizer.o_a * len(queue) + dispatcher.optimizer.o_b
    due = dispatcher.max_latency - (predicted if len(queue) > 1 else waited)
    if (len(queue) > 1 or busy) and due <= 0:
        queue.popleft().future.cancel()  # answered 503 by BentoML
        return 0.0
    return due if busy else None


async def dispatch_when_free(self: Any) -> None:
    """CorkDispatcher's controller, greedy and woken by events: a request's arrival, the end of a
    batch, or the moment the oldest request would miss ``max_latency``.

    BentoML's polls every millisecond while requests wait, so a batch left up to 1 ms after the
    model freed, and under load its polls were 13% of a worker's GIL-holding samples (py-spy).
    """
    await train_latency_model(self)
    while True:
        try:
            async with self._wake_event:
                await self._wake_event.wait_for(self._queue.__len__)
                wait_s = shed_or_wait_s(self, busy=self._sema.is_locked())
                if wait_s is not None:
                    if wait_s > 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(wait_s):
                                await self._wake_event.wait()
                    continue
            self._sema.acquire()
            self._loop.create_task(self.outbound_call(tuple(self._get_inputs())))
        except Exception:  # BentoML's controller survives a failed round the same way
            logger.exception("Error dispatching a batch")


def notify_when_done(original: Any) -> Any:
    """``outbound_call`` that wakes the controller once its batch is done and the model is free."""

    async def outbound_call(self: Any, inputs_info: Any, training: bool = False) -> None:
        try:
            await original(self, inputs_info, training)
        finally:
            async with self._wake_event:
                self._wake_event.notify_all()

    return outbound_call


def use_greedy_batching() -> None:
    """Make this process's BentoML dispatchers release a batch the moment the model is free
    (idempotent).

    Raises:
        BentoMLPatchError: the dispatcher or its optimizer is not what this patch expects.
    """
    optimizer, dispatcher = _optimizer(), _dispatcher()
    if hasattr(optimizer.log_outbound, ORIGINAL_MARK):
        return
    original = optimizer.log_outbound

    def log_outbound(self: Any, n: int, wait: float, duration: float) -> None:
        original(self, n=n, wait=0.0, duration=duration)

    setattr(log_outbound, ORIGINAL_MARK, original)
    optimizer.log_outbound = log_outbound
    for name, replacement in (
        ("controller", dispatch_when_free),
        ("outbound_call", notify_when_done(dispatcher.outbound_call)),
    ):
        setattr(replacement, ORIGINAL_MARK, getattr(dispatcher, name))
        setattr(dispatcher, name, replacement)
    logger.info("adaptive batching: greedy (no cork wait)")


def restore_cork_batching() -> None:
    """Undo :func:`use_greedy_batching` in this process (BentoML's own policy again)."""
    optimizer, dispatcher = _optimizer(), _dispatcher()
    for owner, name in (
        (optimizer, "log_outbound"),
        (dispatcher, "controller"),
        (dispatcher, "outbound_call"),
    ):
        original = getattr(getattr(owner, name), ORIGINAL_MARK, None)
        if original is not None:
            setattr(owner, name, original)


BENTOML_ERROR_LOGGER = "bentoml._internal.server.http_app"
BENTOML_ERROR_MESSAGE = "Exception on %s [%s]"  # log_exception's format: path, method


class ClientErrorFilter(logging.Filter):
    """Rewrites BentoML's ERROR record of a rejected or shed request into one INFO line without the input."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != BENTOML_ERROR_MESSAGE or not record.exc_info or not record.args:
            return True
        status = client_error_status(record.exc_info[1])
        if status is None:  # a server error keeps its level and traceback
            return True
        path, method = record.args if isinstance(record.args, tuple) else (record.args, "")
        record.msg, record.args = (
            "%s %s: %d %s (the input is not logged)",
            (
                method,
                path,
                status,
                type(record.exc_info[1]).__name__,
            ),
        )
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        return True


def client_error_status(exc: BaseException | None) -> int | None:
    """The 4xx status BentoML answers ``exc`` with (503 for a request shed under load), or None for
    a server error."""
    from bentoml.exceptions import BentoMLException, ServiceUnavailable
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, ServiceUnavailable):
        return 503
    if isinstance(exc, BentoMLException):
        status = int(exc.error_code.value)
        return status if status < 500 else None
    return None


def log_client_errors_briefly() -> None:
    """Install :class:`ClientErrorFilter` on BentoML's request error logger (idempotent).

    Raises:
        BentoMLPatchError: BentoML no longer logs rejected requests where and how this expects.
    """
    try:
        from bentoml._internal.server import http_app
    except ImportError as exc:
        raise BentoMLPatchError(f"expected bentoml._internal.server.http_app, found none: {exc}") from exc
    if http_app.logger.name != BENTOML_ERROR_LOGGER or not callable(getattr(http_app, "log_exception", None)):
        raise BentoMLPatchError(
            f"expected log_exception() logging to {BENTOML_ERROR_LOGGER!r}, found {http_app.logger.name!r}"
        )
    logger_ = logging.getLogger(BENTOML_ERROR_LOGGER)
    if not any(isinstance(f, ClientErrorFilter) for f in logger_.filters):
        logger_.addFilter(ClientErrorFilter())


UNKNOWN_PATH = "/{unknown}"  # the metric label of every path no route serves
ORIGINAL_PATH = "refit.original_path"  # where the relabelled request's own path travels in the scope
_known_paths: set[str] = set()
_known_prefixes: set[str] = set()


def metric_path(path: str) -> str:
    """The label of ``path`` in BentoML's HTTP metrics: itself, its known prefix + ``*``, or unknown."""
    if path in _known_paths:
        return path
    prefix = next((p for p in _known_prefixes if path.startswith(p)), None)
    return f"{prefix}*" if prefix is not None else UNKNOWN_PATH


def bound_metric_paths(paths: Collection[str], prefixes: Collection[str] = ()) -> None:
    """Label requests to paths outside ``paths`` and ``prefixes`` as one endpoint (idempotent).

    Args:
        paths: the paths the service serves.
        prefixes: path prefixes served as a tree (static files), labelled ``<prefix>*``.

    Raises:
        BentoMLPatchError: BentoML's HTTP metrics middleware is not what this patch expects.
    """
    try:
        from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as middleware
    except ImportError as exc:
        raise BentoMLPatchError(
            f"bounded metric labels expected RunnerTrafficMetricsMiddleware: {exc}"
        ) from exc
    parameters = list(inspect.signature(middleware.__call__).parameters)
    if parameters != ["self", "scope", "receive", "send"]:
        raise BentoMLPatchError(
            f"bounded metric labels expected RunnerTrafficMetricsMiddleware.__call__(self, scope, receive, "
            f"send), found {parameters}"
        )
    _known_paths.update(paths)
    _known_prefixes.update(prefixes)
    if hasattr(middleware.__call__, ORIGINAL_MARK):
        return
    original = middleware.__call__

    async def relabel(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and (label := metric_path(scope["path"])) != scope["path"]:
            scope = {**scope, "path": label, ORIGINAL_PATH: scope["path"]}
        await original(self, scope, receive, send)

    setattr(relabel, ORIGINAL_MARK, original)
    middleware.__call__ = relabel  # type: ignore[method-assign]


def restore_metric_paths() -> None:
    """Undo :func:`bound_metric_paths`: every path its own label again."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as middleware

    original = getattr(middleware.__call__, ORIGINAL_MARK, None)
    if original is not None:
        middleware.__call__ = original  # type: ignore[method-assign]
    _known_paths.clear()
    _known_prefixes.clear()


def use_json_media_type(service: Any, api_name: str) -> None:
    """Answer ``api_name`` of ``service`` as ``application/json`` without deriving it per response.

    Raises:
        BentoMLPatchError: the API has no output spec with a ``media_type``.
    """
    api = getattr(service, "apis", {}).get(api_name)
    spec = getattr(api, "output_spec", None)
    if spec is None or not hasattr(spec, "media_type") or not callable(getattr(spec, "mime_type", None)):
        raise BentoMLPatchError(
            f"a fixed media type expected API {api_name!r} with an output spec having 'media_type' "
            f"and 'mime_type()', found {spec!r}"
        )
    spec.media_type = "application/json"
    if spec.mime_type() != "application/json":  # mime_type() no longer reads media_type first
        raise BentoMLPatchError(f"{api_name!r}: setting media_type no longer fixes mime_type()")
