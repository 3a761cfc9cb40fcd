"""The one load generator: HTTP traffic against `/classify`, with feedback on part of it.

Used by the demo, the benchmarks, ``make gpu-check`` and the real-server tests. ``concurrency``
clients share one queue of rows; each sends one text per request and waits for the answer before
taking the next row, so the load adapts to the server (what a pool of application threads does).
With ``rate`` the rows also leave on a shared schedule (row i at ``i / rate`` seconds); without it
the clients go as fast as the server answers (closed loop). Rows chosen for feedback send their
true label to `/feedback`. Every non-2xx answer and every transport error counts as a failure, since
the loop's promise is that none happen, swaps included. aiohttp on one event loop keeps the
client's own CPU cost low, which matters when client and server share two cores.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Seconds a client keeps an idle connection for reuse: below uvicorn's 5 s (BentoML's server). A
# caller's callback that runs a monitor check between two requests blocks the loop for seconds;
# on resuming, a connection the server closed meanwhile is reused before its close is read, and
# with aiohttp's default (15 s) that request fails with "Server disconnected".
KEEPALIVE_S = 4.0


@dataclass(frozen=True)
class Answer:
    """One row's outcome: HTTP status (0 for a transport error), version and label that answered."""

    row: int
    status: int
    version: str = ""
    label: str = ""
    latency_ms: float = 0.0


@dataclass
class TrafficStats:
    """What one run sent and what came back, in the order the answers arrived."""

    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # what each failed row got, in order
    versions: Counter[str] = field(default_factory=Counter)  # answers per model version
    correct: Counter[str] = field(default_factory=Counter)  # right answers per model version
    feedback: int = 0  # feedback labels accepted
    elapsed_s: float = 0.0

    @property
    def sent(self) -> int:
        """Rows sent, answered or not."""
        return len(self.answers)

    @property
    def failed(self) -> int:
        """Rows that did not get a 2xx answer."""
        return len(self.failures)

    @property
    def latencies_ms(self) -> list[float]:
        """Latency of each answered request."""
        return [a.latency_ms for a in self.answers if a.status == 200]

    @property
    def requests(self) -> int:
        """Requests `/classify` answered."""
        return sum(a.status == 200 for a in self.answers)

    @property
    def rps(self) -> float:
        """Answered requests per second."""
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile of the answered requests in milliseconds (NaN without any)."""
        latencies = self.latencies_ms
        return float(np.percentile(latencies, q)) if latencies else float("nan")

    def answered_by_others(self, version: str) -> int:
        """Requests answered by any version but ``version``."""
        return sum(n for v, n in self.versions.items() if v != version)


@dataclass(frozen=True)
class Traffic:
    """What to send: texts or images (bytes), and for feedback their true labels and which rows
    send them."""

    inputs: Sequence[str | bytes]
    labels: Sequence[str] | None = None
    feedback: np.ndarray | None = None  # boolean mask over the rows

    def __post_init__(self) -> None:
        if self.feedback is not None and self.labels is None:
            raise ValueError("feedback needs the true labels")


def request_body(item: str | bytes) -> dict[str, list[str]]:
    """The /classify body for one text, or one image (base64)."""
    if isinstance(item, bytes):
        return {"images": [base64.b64encode(item).decode("ascii")]}
    return {"texts": [item]}


def first_answer(body: Any) -> dict[str, Any]:
    """The one prediction of a /classify answer (a list of one)."""
    [item] = body
    return dict(item)


@dataclass(frozen=True)
class Protocol:
    """How a row becomes a request and its answer a prediction: Refit's `/classify` by default.

    A benchmark's peer that speaks another protocol (Triton's KServe v2) gets its own, so that the
    same load generator measures every server.
    """

    path: str = "/classify"
    encode: Callable[[str | bytes], Any] = request_body
    decode: Callable[[Any], dict[str, Any]] = first_answer


def choose_feedback(n: int, share: float, seed: int) -> np.ndarray:
    """A boolean mask marking about ``share`` of ``n`` rows for feedback."""
    return np.random.default_rng(seed).random(n) < share


def send_traffic(
    url: str,
    traffic: Traffic,
    *,
    concurrency: int = 4,
    rate: float | None = None,
    duration_s: float | None = None,
    repeat: bool = False,
    until: Callable[[TrafficStats], bool] | None = None,
    on_answer: Callable[[Answer], None] | None = None,
    stats: TrafficStats | None = None,
    headers: dict[str, str] | None = None,
    protocol: Protocol | None = None,
) -> TrafficStats:
    """Send ``traffic`` to the service at ``url`` and count what comes back.

    Args:
        url: the service's base URL (`/classify` and `/feedback` are added).
        traffic: the rows, in order.
        concurrency: clients, hence requests in flight at most.
        rate: requests per second over all clients; None sends as fast as answers come.
        duration_s: stop taking rows after this many seconds.
        repeat: start over at the end of the rows (until ``duration_s`` or ``until`` stops it).
        until: stop taking rows once this returns True (checked before each row).
        on_answer: called with each answer as it arrives (a progress bar's advance).
        stats: counts to add to (a new one by default).
        headers: added to every request.
        protocol: how rows become requests (Refit's `/classify` by default).

    Returns:
        The counts, including every failure's message.
    """
    if not repeat and duration_s is None and until is None and not traffic.inputs:
        return stats or TrafficStats()
    if repeat and not traffic.inputs:
        raise ValueError("repeat needs at least one row")
    stats = stats or TrafficStats()
    run = _Run(url, traffic, rate, duration_s, repeat, until, on_answer, stats, headers or {}, protocol)
    asyncio.run(run.start(concurrency))
    return stats


class _Run:
    """One call of ``send_traffic``: the shared schedule and the clients that consume it."""

    def __init__(
        self,
        url: str,
        traffic: Traffic,
        rate: float | None,
        duration_s: float | None,
        repeat: bool,
        until: Callable[[TrafficStats], bool] | None,
        on_answer: Callable[[Answer], None] | None,
        stats: TrafficStats,
        headers: dict[str, str],
        protocol: Protocol | None = None,
    ) -> None:
        self.url, self.traffic, self.rate, self.duration_s = url, traffic, rate, duration_s
        self.until, self.on_answer, self.stats, self.headers = until, on_answer, stats, headers
        self.order = _schedule(len(traffic.inputs), repeat)
        self.start_time = 0.0
        self.protocol = protocol or Protocol()

    async def start(self, concurrency: int) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=KEEPALIVE_S)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(self.url, connector=connector, timeout=timeout) as session:
            self.start_time = time.perf_counter()
            await asyncio.gather(*[self._client(session) for _ in range(concurrency)])
        self.stats.elapsed_s += time.perf_counter() - self.start_time

    def _next_row(self) -> tuple[int, int] | None:
        if self.until is not None and self.until(self.stats):
            return None
        if self.duration_s is not None and time.perf_counter() - self.start_time >= self.duration_s:
            return None
        return next(self.order, None)

    async def _client(self, session: Any) -> None:
        while (item := self._next_row()) is not None:
            slot, row = item
            if self.rate:
                delay = self.start_time + slot / self.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            answer, failure = await self._send(session, row)
            self._count(answer, failure)

    async def _send(self, session: Any, row: int) -> tuple[Answer, str | None]:
        start = time.perf_counter()
        try:
            protocol = self.protocol
            async with session.post(
                protocol.path, json=protocol.encode(self.traffic.inputs[row]), headers=self.headers
            ) as response:
                body = await response.read()
                if response.status != 200:
                    return Answer(row, response.status), f"{protocol.path} {response.status}: {body[:200]!r}"
                item = protocol.decode(await response.json())
            latency_ms = (time.perf_counter() - start) * 1000
            # Servers other than Refit's (a benchmark's baseline) may name no version.
            answer = Answer(row, 200, str(item.get("version", "")), str(item.get("label", "")), latency_ms)
            if self.traffic.feedback is not None and self.traffic.feedback[row]:
                return answer, await self._send_feedback(session, row, item)
            return answer, None
        except Exception as exc:  # connection errors count as failed rows, not crashes
            return Answer(row, 0), f"{type(exc).__name__}: {exc}"

    async def _send_feedback(self, session: Any, row: int, item: dict[str, Any]) -> str | None:
        assert self.traffic.labels is not None  # Traffic checks it
        # A text goes too: the prediction may still be in the service's log queue, not yet findable
        # by id (the service waits for the queue when only an image's request id can say it).
        sent, label = self.traffic.inputs[row], str(self.traffic.labels[row])
        body = {"request_id": item["request_id"], "label": label}
        if isinstance(sent, str):
            body["text"] = sent
        async with session.post("/feedback", json=body, headers=self.headers) as response:
            if response.status != 200:
                return f"/feedback {response.status}: {(await response.read())[:200]!r}"
        self.stats.feedback += 1
        return None

    def _count(self, answer: Answer, failure: str | None) -> None:
        stats = self.stats
        stats.answers.append(answer)
        if failure is not None:
            stats.failures.append(failure)
        if answer.status == 200:
            stats.versions[answer.version] += 1
            if self.traffic.labels is not None:
                stats.correct[answer.version] += int(answer.label == str(self.traffic.labels[answer.row]))
        if self.on_answer is not None:
            self.on_answer(answer)


def _schedule(n: int, repeat: bool) -> Iterator[tuple[int, int]]:
    """(send slot, row index) pairs: each row once, or round and round when ``repeat``."""
    slot = 0
    while True:
        for i in range(n):
            yield slot, i
            slot += 1
        if not repeat or n == 0:
            return
