"""Even shares of keep-alive connections between a server's workers.

BentoML's workers accept from one shared listening socket, and whichever worker wins the race for
a new connection keeps it for as long as the client keeps it alive. Clients that open their
connections in a burst often land them all on one worker: measured on 2 cores with 2 workers,
8 of 8 and 32 of 32 connections on one worker while the other idled, which cost half the
texts/s at concurrency 8 (94 against 179 in the same scratch run). Closing connections now and
then does not help by itself: the new connection is raced for like the first, and reconnecting
every 20 requests still left 26 of 32 on one worker.

So each worker publishes, several times a second, how many client connections sent it a request
in the last second, in a small file that the workers of one server share; a worker holding more
than its fair share (of the workers that published lately) plus one answers a request with
``Connection: close``, and the client's next connection is raced for again, until no worker is
over its share. A client pays one reconnect for each (a fraction of a millisecond on a local
network). A worker that stopped publishing (it died, circus restarts it) has no share.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path

ACTIVE_S = 1.0  # a connection that sent nothing for this long no longer counts; nor does a worker
PUBLISH_S = ACTIVE_S / 4  # how often a worker publishes its count when no request comes
CLOSE_INTERVAL_S = 0.05  # at most one connection closed per worker in this time
SLOT = struct.Struct("<dq")  # per worker: (monotonic time of its last update, connections)
MAX_WORKERS = 64


class ConnectionBalance:
    """One worker's connections and its peers' published counts.

    Args:
        path: the file the server's workers share (created if missing).
        worker: this worker's index, from 0.
        workers: how many workers the server runs.
        clock: seconds, comparable between processes (``time.monotonic`` is, on one machine).
    """

    def __init__(
        self, path: Path, worker: int, workers: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 0 <= worker < workers <= MAX_WORKERS:
            raise ValueError(f"worker {worker} of {workers}: expected 0 <= worker < workers <= {MAX_WORKERS}")
        self.worker, self.workers, self.clock = worker, workers, clock
        size = SLOT.size * MAX_WORKERS
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._shared = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._seen: dict[Hashable, float] = {}  # client -> its last request, oldest first
        self._lock = threading.Lock()  # requests and the publishing thread share the clients
        self._last_close = float("-inf")
        self.publish()

    @classmethod
    def for_this_worker(cls, workers: int) -> ConnectionBalance | None:
        """The balance of the BentoML worker this runs in, publishing from a daemon thread; None
        with one worker or outside a server."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if workers < 2 or workers > MAX_WORKERS or not directory:
            return None
        from bentoml._internal.context import server_context

        worker = (server_context.worker_index or 1) - 1
        if worker >= workers:
            return None
        # The workers' parent is the server's arbiter: one file per running server.
        balance = cls(Path(directory) / f"refit-connections-{os.getppid()}", worker, workers)
        threading.Thread(target=balance.publish_forever, name="refit-balance", daemon=True).start()
        return balance

    def publish(self) -> int:
        """Write this worker's count of connections active in the last ``ACTIVE_S``; return it."""
        now = self.clock()
        with self._lock:
            if self._seen and next(iter(self._seen.values())) < now - ACTIVE_S:
                self._seen = {c: t for c, t in self._seen.items() if t >= now - ACTIVE_S}
            mine = len(self._seen)
        SLOT.pack_into(self._shared, self.worker * SLOT.size, now, mine)
        return mine

    def publish_forever(self) -> None:
        """Publish every ``PUBLISH_S``, so that an idle worker still counts (with none)."""
        while True:
            time.sleep(PUBLISH_S)
            self.publish()

    def should_close(self, client: Hashable) -> bool:
        """Record a request from ``client`` (its address and port); True when this worker holds
        more than its share and the connection should close after this response."""
        now = self.clock()
        with self._lock:
            self._seen.pop(client, None)  # re-inserted last: the dict stays oldest first
            self._seen[client] = now
        mine = self.publish()
        if now - self._last_close < CLOSE_INTERVAL_S:
            return False
        total, live = 0, 0
        for index in range(self.workers):
            updated, count = SLOT.unpack_from(self._shared, index * SLOT.size)
            if now - updated < ACTIVE_S:
                total, live = total + count, live + 1
        if mine <= total / live + 1:
            return False
        with self._lock:
            self._seen.pop(client, None)
        self._last_close = now
        return True
