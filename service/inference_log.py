"""Writes predictions to the inference log off the request path, and feedback durably.

Predictions go into a bounded queue that one writer thread drains with batched INSERTs. The
request never waits for the database: when the queue is full or the store is down, records are
dropped, counted and logged, and predictions keep succeeding. Feedback is the opposite: it is
acknowledged only after its INSERT has committed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import SQLAlchemyError

from service.inference_log_db import (
    create_log_engine,
    create_tables,
    feedback,
    predictions,
    sqlite_file,
    utc_now,
)
from training.blobs import BlobStore
from training.images import ImageError, decode_image, describe_image
from training.probabilities import round_as_logged

if TYPE_CHECKING:
    from service.predictor import Prediction

logger = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0
RETRY_AFTER_FAILURE_S = 1.0


IMAGE_FIELD = "_image"  # a record's image bytes, until the writer has stored them


def prediction_records(
    predictions: list[Prediction], inputs: list[Any], latency_ms: float
) -> list[dict[str, Any]]:
    """The ``predictions`` rows of one model call (the inputs are stored: drift checks read them).

    An image's row gets its content key and descriptors from the writer thread, which also
    stores its bytes: none of that work is on the request's path.
    """
    now = utc_now()
    return [
        {
            "request_id": p.request_id,
            "created": now,
            "model": p.model,
            "version": p.version,
            "input": None,
            **({"text": "", IMAGE_FIELD: item} if isinstance(item, bytes) else {"text": item}),
            "label": p.label,
            "confidence": p.confidence,
            "probabilities": round_as_logged(p.probabilities).tolist(),
            "latency_ms": latency_ms,
            "truncated": p.truncated,
        }
        for p, item in zip(predictions, inputs, strict=True)
    ]


def store_images(batch: list[dict[str, Any]], store: BlobStore) -> None:
    """Store the images of queued records and put their content keys and descriptors in the rows."""
    for record in batch:
        data = record.pop(IMAGE_FIELD, None)
        if data is None:
            continue
        record["text"] = store.put(data)
        try:
            descriptors: dict[str, Any] = describe_image(decode_image(data, record["request_id"]))
        except ImageError:  # checked before it was classified; kept as bytes only if not
            descriptors = {}
        record["input"] = {"bytes": len(data), **descriptors}


class InferenceLogUnavailable(Exception):
    """The inference log cannot be written right now."""


class InferenceLog:
    """The service's connection to the inference log."""

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_ms: int = 200,
        retention_days: float = 30.0,
        on_dropped: Callable[[int], None] = lambda n: None,
        on_written: Callable[[int], None] = lambda n: None,
        on_depth: Callable[[int], None] = lambda n: None,
        on_reopened: Callable[[], None] = lambda: None,
        images: BlobStore | None = None,
        images_max_bytes: int = 10_000_000_000,
    ) -> None:
        self.url = url
        self.images = images  # where logged images go; None: texts only
        self.images_max_bytes = images_max_bytes
        self.batch_size = batch_size
        self.flush_s = flush_ms / 1000
        self.retention = timedelta(days=retention_days)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._on_dropped = on_dropped
        self._on_written = on_written
        self._on_depth = on_depth
        self._on_reopened = on_reopened
        self._file = sqlite_file(url)  # watched: a removed or replaced file is opened again
        self._file_id: tuple[int, int] | None = None
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()  # the writer thread and request threads share it
        self._stop = threading.Event()
        self._wake = threading.Event()  # write what is queued now (flush, close)
        self._thread: threading.Thread | None = None
        self._last_retention = 0.0
        self._last_warning = 0.0
        self.dropped = 0
        self.writes_failing = False  # the last batch could not be written (a store outage)

    @property
    def depth(self) -> int:
        """Records waiting to be written."""
        return self._queue.qsize()

    def engine(self) -> Engine:
        """The engine, created (with the tables) on first use; raises while the store is down."""
        with self._engine_lock:
            if self._engine is not None and self._file is not None and _file_id(self._file) != self._file_id:
                # Writing on would go to an unlinked or foreign file that no reader opens.
                logger.warning("the inference log %s was removed or replaced; opening it again", self._file)
                self._engine.dispose()
                self._engine = None
                self._on_reopened()
            if self._engine is None:
                engine = create_log_engine(self.url)
                try:
                    create_tables(engine)
                except SQLAlchemyError:
                    engine.dispose()
                    raise
                self._engine = engine
                self._file_id = _file_id(self._file) if self._file is not None else None
            return self._engine

    def start(self) -> None:
        """Create the tables (if the store is up) and start the writer thread."""
        try:
            self.engine()
        except SQLAlchemyError as exc:  # predictions must still be served; the writer retries
            logger.warning("the inference log is unavailable at start-up: %s", exc)
        self._thread = threading.Thread(target=self._run, name="refit-payload-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout``), then stop the writer."""
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._engine is not None:
            self._engine.dispose()

    def submit(self, records: list[dict[str, Any]]) -> None:
        """Queue prediction records without blocking; a full queue drops (and counts) them."""
        for i, record in enumerate(records):
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._drop(len(records) - i, "the log queue is full")
                return

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until every queued record has been written or dropped; False on timeout."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._on_dropped(count)
        now = time.monotonic()
        if now - self._last_warning > 10:  # at most one warning per 10 s under sustained failure
            logger.warning(
                "dropped %d prediction record(s): %s (%d dropped in all)", count, why, self.dropped
            )
            self._last_warning = now

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._take_batch()
            if batch:
                self._write(batch)
            self._on_depth(self.depth)
            self._apply_retention()

    def _take_batch(self) -> list[dict[str, Any]]:
        # The writer sleeps a flush interval unless a full batch waits or flush() asks, rather
        # than waking for every request: those wake-ups cost 3-10% of the texts/s under load.
        if self._queue.qsize() < self.batch_size:
            self._wake.wait(self.flush_s)
            self._wake.clear()
        batch: list[dict[str, Any]] = []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[dict[str, Any]]) -> None:
        try:
            if self.images is not None:
                store_images(batch, self.images)
            with self.engine().begin() as conn:
                conn.execute(insert(predictions), batch)
            self._on_written(len(batch))
            self.writes_failing = False
        except (SQLAlchemyError, OSError) as exc:
            self.writes_failing = True
            self._drop(
                len(batch), f"the log store failed: {type(exc).__name__}: {exc.args[0] if exc.args else ''}"
            )
            self._reset_engine()
            self._stop.wait(RETRY_AFTER_FAILURE_S)
        finally:
            for _ in batch:
                self._queue.task_done()

    def _reset_engine(self) -> None:
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def _apply_retention(self) -> None:
        now = time.monotonic()
        if now - self._last_retention < RETENTION_EVERY_S:
            return
        self._last_retention = now
        cutoff = utc_now() - self.retention
        try:
            with self.engine().begin() as conn:
                removed = conn.execute(delete(predictions).where(predictions.c.created < cutoff)).rowcount
                removed += conn.execute(delete(feedback).where(feedback.c.created < cutoff)).rowcount
            if removed:
                logger.info("retention: deleted %d log rows older than %s", removed, cutoff.isoformat())
            if self.images is not None:
                self._prune_images()
        except SQLAlchemyError as exc:
            logger.warning("retention skipped, the log store failed: %s", exc)
            self._reset_engine()

    def _prune_images(self) -> None:
        """Apply retention and the size cap to logged images; images with feedback stay."""
        assert self.images is not None
        with self.engine().connect() as conn:
            labelled = [row[0] for row in conn.execute(select(feedback.c.text))]
        removed = self.images.prune(
            self.images_max_bytes, self.retention.total_seconds(), keep=(t for t in labelled if t)
        )
        if removed:
            logger.info("retention: deleted %d logged images", removed)

    def find_prediction(self, request_id: str, wait_s: float = 2.0) -> dict[str, Any] | None:
        """The logged prediction with this request id (after writing what is queued), or None.

        Another worker of the service may have answered the request: its writer commits within
        its flush interval, so an id not found at once is looked up again for up to ``wait_s``.

        Raises:
            InferenceLogUnavailable: the store cannot be read.
        """
        flushed = self.flush(timeout=2.0)
        deadline = time.monotonic() + wait_s
        while True:
            row = self._select_prediction(request_id)
            if row is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if row is None and (self.writes_failing or not flushed):
            # The prediction may wait in the queue, or have been dropped, while the store takes no
            # writes: that is an outage to retry after, not an unknown id.
            raise InferenceLogUnavailable("the inference log is not taking writes now")
        return row

    def _select_prediction(self, request_id: str) -> dict[str, Any] | None:
        try:
            with self.engine().connect() as conn:
                row = conn.execute(select(predictions).where(predictions.c.request_id == request_id)).first()
        except SQLAlchemyError as exc:
            self._reset_engine()
            raise InferenceLogUnavailable(f"the inference log cannot be read: {type(exc).__name__}") from exc
        return dict(row._mapping) if row is not None else None

    def record_feedback(self, record: dict[str, Any]) -> int:
        """Insert one feedback record and commit before returning its id.

        Raises:
            InferenceLogUnavailable: the store cannot be written; nothing was stored.
        """
        try:
            with self.engine().begin() as conn:
                result = conn.execute(insert(feedback).values(**record))
                key = result.inserted_primary_key
                return int(key[0]) if key is not None else 0
        except SQLAlchemyError as exc:
            self._reset_engine()
            raise InferenceLogUnavailable(
                f"the inference log cannot be written: {type(exc).__name__}"
            ) from exc

    def feedback_record(
        self, model: str, label: str, request_id: str | None, text: str | None, source: str | None = None
    ) -> dict[str, Any] | None:
        """The ``feedback`` row for a true label: its prediction's text and answer when logged.

        Returns None when only an unknown ``request_id`` was given (nothing to attach the label to).
        """
        record = {"created": utc_now(), "model": model, "label": label, "request_id": request_id}
        record["source"] = source
        # With the text at hand there is no need to wait for another worker's writer.
        found = self.find_prediction(request_id, wait_s=0.0 if text else 2.0) if request_id else None
        if found is not None:
            return {
                **record,
                "text": found["text"],
                "predicted_label": found["label"],
                "version": found["version"],
            }
        if not text:
            return None
        return {**record, "text": text, "predicted_label": None, "version": None}


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``, or None when it does not exist."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino
