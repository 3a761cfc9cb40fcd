"""Closed-loop HTTP load against a classify endpoint: throughput, latency percentiles, errors.

Each of ``concurrency`` clients sends one request, waits for the answer, and sends the next,
so the offered load adapts to the server (what a pool of application threads does). aiohttp
keeps the client's own CPU cost low, which matters when client and server share two cores.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LoadResult:
    """What one closed-loop run measured."""

    concurrency: int
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)  # successful requests only
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """Successful requests."""
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds (NaN without successful requests)."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


async def _client(
    session: Any, url: str, texts: Any, stop_at: float, result: LoadResult, headers: dict[str, str]
) -> None:
    while time.perf_counter() < stop_at:
        body = {"texts": [next(texts)]}
        start = time.perf_counter()
        try:
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                ok = response.status == 200
                status = str(response.status)
        except Exception as exc:  # connection errors count as failed requests, not crashes
            ok, status = False, type(exc).__name__
        if ok:
            result.latencies_ms.append((time.perf_counter() - start) * 1000)
        else:
            result.errors += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(status)


async def _run(
    url: str, texts: Sequence[str], concurrency: int, duration_s: float, headers: dict[str, str]
) -> LoadResult:
    import aiohttp

    result = LoadResult(concurrency=concurrency, elapsed_s=0.0)
    cycle = itertools.cycle(texts)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        stop_at = start + duration_s
        await asyncio.gather(
            *[_client(session, url, cycle, stop_at, result, headers) for _ in range(concurrency)]
        )
        result.elapsed_s = time.perf_counter() - start
    return result


def run_closed_loop(
    url: str,
    texts: Sequence[str],
    concurrency: int,
    duration_s: float,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Send one text per request from ``concurrency`` clients for ``duration_s`` seconds.

    Args:
        url: the full classify URL, e.g. ``http://127.0.0.1:3000/classify``.
        texts: request texts, used in turn.
    """
    return asyncio.run(_run(url, texts, concurrency, duration_s, headers or {}))
