"""How BentoML's adaptive batching dispatcher decides to wait: its CORK policy or greedy.

BentoML's CorkDispatcher holds a request back for about the average wait of recent batches,
hoping for a bigger batch. That average includes the time requests spent queued behind a busy
model, so after a burst every lone request is held for about one batch duration, and the average
decays only ~5% per 50 batches: measured here, single-request latency went from 6.5 ms on a fresh
server to 83-136 ms after 6 s at concurrency 32, for minutes. ``greedy`` records every wait as
zero, so the dispatcher releases a batch as soon as the model is free and batches form from what
queued during the previous call (the policy of Triton's dynamic batcher with no queue delay).
Its latency shedding (503 when a request would miss ``max_latency_ms``) is unchanged.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)


@functools.cache
def use_greedy_batching() -> None:
    """Make this process's BentoML dispatchers release batches without waiting (idempotent)."""
    from bentoml._internal.marshal import dispatcher

    original = dispatcher.Optimizer.log_outbound

    def log_outbound(self: Any, n: int, wait: float, duration: float) -> None:
        original(self, n=n, wait=0.0, duration=duration)

    dispatcher.Optimizer.log_outbound = log_outbound  # type: ignore[method-assign]
    logger.info("adaptive batching: greedy (no cork wait)")
