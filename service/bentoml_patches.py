"""Every change Refit makes to BentoML's internals, why each is needed, and a check that it still applies.

BentoML ``>=1.4.37,<1.5`` exposes no setting for either behaviour below, so Refit changes two
internal objects. Each function checks that what it changes still exists and raises
:class:`BentoMLPatchError` otherwise; ``tests/test_bentoml_patches.py`` runs both against the
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
   request would miss ``max_latency_ms``) is unchanged. ``batch_wait: adaptive`` keeps BentoML's.
2. **A fixed JSON media type** (``use_json_media_type``). BentoML derives the response media type
   from the output's JSON schema, rebuilding a pydantic TypeAdapter on every response: ~5% of a
   worker's CPU under load, measured with py-spy. The answer is always JSON.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

logger = logging.getLogger(__name__)

GREEDY_MARK = "_refit_original"  # the patched method keeps BentoML's under this attribute


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


def use_greedy_batching() -> None:
    """Make this process's BentoML dispatchers release batches without waiting (idempotent).

    Raises:
        BentoMLPatchError: the dispatcher's optimizer is not what this patch expects.
    """
    optimizer = _optimizer()
    if hasattr(optimizer.log_outbound, GREEDY_MARK):
        return
    original = optimizer.log_outbound

    def log_outbound(self: Any, n: int, wait: float, duration: float) -> None:
        original(self, n=n, wait=0.0, duration=duration)

    setattr(log_outbound, GREEDY_MARK, original)
    optimizer.log_outbound = log_outbound
    logger.info("adaptive batching: greedy (no cork wait)")


def restore_cork_batching() -> None:
    """Undo :func:`use_greedy_batching` in this process (BentoML's own policy again)."""
    optimizer = _optimizer()
    original = getattr(optimizer.log_outbound, GREEDY_MARK, None)
    if original is not None:
        optimizer.log_outbound = original


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
