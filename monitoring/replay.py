"""Replay labelled traffic against a running service at a steady rate, with feedback on part of it.

The demo's client: several threads share one paced schedule (request i leaves at ``i / rate``
seconds), each sends one text per `/classify` and, for the rows chosen for feedback, the true
label to `/feedback`. Every non-2xx answer and every transport error counts as a failure, since
the loop's promise is that none happen, swaps included.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import pandas as pd


@dataclass
class ReplayStats:
    """What one replay sent and what came back."""

    sent: int = 0
    feedback: int = 0
    failures: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)  # answers per model version
    correct: Counter[str] = field(default_factory=Counter)  # right answers per model version
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def failed(self) -> int:
        """Requests that did not get a 2xx answer."""
        return len(self.failures)

    def answered_by_others(self, version: str) -> int:
        """Requests answered by any version but ``version`` (thread-safe)."""
        with self._lock:
            return sum(n for v, n in self.versions.items() if v != version)

    def add(self, version: str | None, correct: bool, labelled: bool, failure: str | None) -> None:
        """Count one row's outcome (thread-safe)."""
        with self._lock:
            self.sent += 1
            if failure is not None:
                self.failures.append(failure)
                return
            if version is not None:
                self.versions[version] += 1
                self.correct[version] += int(correct)
            self.feedback += int(labelled)


def choose_feedback(n: int, share: float, seed: int) -> np.ndarray:
    """A boolean mask marking about ``share`` of ``n`` rows for feedback."""
    return np.random.default_rng(seed).random(n) < share


def send_row(client: httpx.Client, text: str, label: str, labelled: bool) -> tuple[str, bool, str | None]:
    """One `/classify` (and `/feedback` when ``labelled``): (version, correct, failure or None)."""
    try:
        response = client.post("/classify", json={"texts": [text]})
        if response.status_code != 200:
            return "", False, f"/classify {response.status_code}: {response.text[:200]}"
        answer = response.json()[0]
        if labelled:
            body = {"request_id": answer["request_id"], "text": text, "label": label}
            response = client.post("/feedback", json=body)
            if response.status_code != 200:
                return answer["version"], False, f"/feedback {response.status_code}: {response.text[:200]}"
        return answer["version"], answer["label"] == label, None
    except httpx.HTTPError as exc:
        return "", False, f"{type(exc).__name__}: {exc}"


def replay(
    url: str,
    rows: pd.DataFrame,
    labelled: np.ndarray,
    *,
    rate: float,
    concurrency: int = 4,
    stats: ReplayStats | None = None,
    on_row: Callable[[], None] | None = None,
    until: Callable[[], bool] | None = None,
    repeat: bool = False,
) -> ReplayStats:
    """Send ``rows`` (columns ``text``, ``label``) at ``rate`` requests/s from ``concurrency`` threads.

    Args:
        url: the service's base URL.
        rows: the traffic, in order.
        labelled: which rows also get a feedback label.
        rate: requests per second over all threads.
        concurrency: client threads (requests in flight at most).
        stats: counts to add to (a new one by default).
        on_row: called after each row (a progress bar's advance).
        until: stop early once this returns True (checked before each row).
        repeat: start over at the end of ``rows`` until ``until`` says stop.

    Returns:
        The counts, including every failure's message.
    """
    stats = stats or ReplayStats()
    order = _schedule(len(rows), repeat)
    lock = threading.Lock()
    start = time.monotonic()

    def next_index() -> tuple[int, int] | None:
        with lock:
            return next(order, None)

    def work() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while (item := next_index()) is not None:
                if until is not None and until():
                    return
                slot, i = item
                delay = start + slot / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                text, label = str(rows["text"].iat[i]), str(rows["label"].iat[i])
                version, correct, failure = send_row(client, text, label, bool(labelled[i]))
                stats.add(version or None, correct, bool(labelled[i]), failure)
                if on_row is not None:
                    on_row()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stats


def _schedule(n: int, repeat: bool) -> Iterator[tuple[int, int]]:
    """(send slot, row index) pairs: each row once, or round and round when ``repeat``."""
    slot = 0
    while True:
        for i in range(n):
            yield slot, i
            slot += 1
        if not repeat or n == 0:
            return
