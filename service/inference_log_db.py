"""The inference log's schema and connection: predictions and feedback, through SQLAlchemy.

SQLite (WAL mode, so the monitor reads while the service writes) by default; PostgreSQL by URL
when several replicas share one log. The monitor reads the same tables.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

logger = logging.getLogger(__name__)

metadata = MetaData()

predictions = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(32), nullable=False, unique=True),
    Column("created", DateTime(timezone=True), nullable=False, index=True),
    Column("model", String(200), nullable=False),
    Column("version", String(64), nullable=False, index=True),
    Column("text", Text, nullable=False),
    Column("label", String(200), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("probabilities", JSON, nullable=False),  # list[float], in the version's label order
    Column("latency_ms", Float, nullable=False),
    Column("truncated", Boolean, nullable=False),
    # Images: the text column holds the image's content key (its bytes are in the image store);
    # this holds its size in bytes and the descriptors the drift check reads. None for texts.
    Column("input", JSON, nullable=True),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(32), nullable=True, index=True),
    Column("created", DateTime(timezone=True), nullable=False, index=True),
    Column("model", String(200), nullable=False),
    Column("text", Text, nullable=False),
    Column("label", String(200), nullable=False),
    Column("predicted_label", String(200), nullable=True),
    Column("version", String(64), nullable=True),
    Column("source", String(200), nullable=True),  # the API key that sent it; None: no keys in use
)
# Columns added since a table was first created: `create_tables` adds them to an existing log.
ADDED_COLUMNS = {"feedback": ("source",), "predictions": ("input",)}


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _enable_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the monitor read while the service writes; NORMAL sync is durable across process
    # crashes (only an OS crash can lose the last transactions), which is what a log needs.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def create_log_engine(url: str) -> Engine:
    """An engine for the inference log; SQLite files get their folder and WAL mode."""
    if make_url(url).get_backend_name() == "sqlite":
        if (path := sqlite_file(url)) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 10})
        event.listen(engine, "connect", _enable_wal)
        return engine
    return create_engine(url, pool_pre_ping=True)


def create_tables(engine: Engine, tables: MetaData | None = None) -> None:
    """Create the log's tables (or those of ``tables``) where missing; safe from every replica.

    Workers and replicas starting together race between "does it exist" and "CREATE TABLE"; the
    loser's CREATE fails ("already exists": OperationalError on SQLite, IntegrityError or
    ProgrammingError on PostgreSQL), and a second pass then finds the tables there.
    """
    for attempt in range(3):
        try:
            (tables or metadata).create_all(engine, checkfirst=True)
            add_missing_columns(engine, tables or metadata)
            return
        except (IntegrityError, OperationalError, ProgrammingError) as exc:
            if attempt == 2:
                raise
            logger.debug("another process created the log's tables first (%s); checking again", exc.orig)
            time.sleep(0.2 * (attempt + 1))


def add_missing_columns(engine: Engine, tables: MetaData) -> None:
    """Add the ``ADDED_COLUMNS`` an existing table lacks (nullable, so old rows stay as they are)."""
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    for name, columns in ADDED_COLUMNS.items():
        if name not in tables.tables or not inspector.has_table(name):
            continue
        present = {column["name"] for column in inspector.get_columns(name)}
        for column_name in columns:
            if column_name in present:
                continue
            column = tables.tables[name].c[column_name]
            column_type = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {name} ADD COLUMN {column_name} {column_type}"))
            logger.info("added the column %s.%s to the inference log", name, column_name)
