"""The monitor's tables beside the inference log: check history, retrain audit, the lease; and the
queries that read a window of predictions and the feedback labels.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from service.inference_log_db import feedback, predictions, utc_now

metadata = MetaData()

drift_checks = Table(
    "drift_checks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("checked_at", DateTime(timezone=True), nullable=False, index=True),
    Column("model", String(200), nullable=False),
    Column("version", String(64), nullable=True),
    Column("status", String(32), nullable=False),  # ok, drift, insufficient_data, skipped
    Column("drifted", Boolean, nullable=False),
    Column("share", Float, nullable=False),
    Column("window_size", Integer, nullable=False),
    Column("estimated_accuracy", Float, nullable=True),
    Column("observed_accuracy", Float, nullable=True),
    Column("report", Text, nullable=True),  # path of the HTML report
    Column("detail", JSON, nullable=False),  # per-column scores, or why it was skipped
)

ADAPT_TRIGGER = " (adapt)"  # a retrain_runs trigger of an adaptation ends with this

retrain_runs = Table(
    "retrain_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("model", String(200), nullable=False),
    Column("trigger", String(32), nullable=False),  # drift, manual; "drift (adapt)", "manual (adapt)"
    Column("production_version", String(64), nullable=True),
    Column("candidate_version", String(64), nullable=True),
    Column("outcome", String(32), nullable=False),  # promoted, rejected, reported, failed, skipped
    Column("reason", Text, nullable=False),
    Column("numbers", JSON, nullable=False),  # the gate's accuracies
)

quarantined_sources = Table(
    "quarantined_sources",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("source", String(200), primary_key=True),  # an API key's name, or "anonymous"
    Column("reason", Text, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
)

leases = Table(
    "monitor_leases",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False),
)


def create_monitor_tables(engine: Engine) -> None:
    """Create the inference log's and the monitor's tables where missing."""
    from service.inference_log_db import create_tables

    create_tables(engine)
    create_tables(engine, metadata)


def holder_id() -> str:
    """This process, as a lease holder: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire_lease(engine: Engine, name: str, seconds: float, holder: str | None = None) -> bool:
    """Take the named lease unless another holder has an unexpired one; True when taken."""
    holder = holder or holder_id()
    now = utc_now()
    expires = now + timedelta(seconds=seconds)
    with engine.begin() as conn:
        taken = conn.execute(
            update(leases)
            .where(and_(leases.c.name == name, or_(leases.c.expires < now, leases.c.holder == holder)))
            .values(holder=holder, expires=expires)
        ).rowcount
        if taken:
            return True
        try:
            conn.execute(insert(leases).values(name=name, holder=holder, expires=expires))
        except IntegrityError:  # someone else holds it
            return False
    return True


def release_lease(engine: Engine, name: str, holder: str | None = None) -> None:
    """Give the lease back (only if this holder has it)."""
    holder = holder or holder_id()
    with engine.begin() as conn:
        conn.execute(
            update(leases)
            .where(and_(leases.c.name == name, leases.c.holder == holder))
            .values(expires=datetime(1970, 1, 1, tzinfo=utc_now().tzinfo))
        )


def read_window(
    engine: Engine, model: str, version: str, size: int, minutes: float | None = None
) -> pd.DataFrame:
    """The last ``size`` predictions of ``model:version`` (within ``minutes`` when given), oldest first."""
    query = select(
        predictions.c.request_id,
        predictions.c.created,
        predictions.c.text,
        predictions.c.label,
        predictions.c.probabilities,
        predictions.c.input,
    ).where(and_(predictions.c.model == model, predictions.c.version == version))
    if minutes is not None:
        query = query.where(predictions.c.created >= utc_now() - timedelta(minutes=minutes))
    query = query.order_by(predictions.c.id.desc()).limit(size)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    columns = ["request_id", "created", "text", "label", "probabilities", "input"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["probabilities"] = [json.loads(p) if isinstance(p, str) else p for p in frame["probabilities"]]
    # An image's descriptors, logged beside its prediction, become columns (none for texts).
    described = pd.DataFrame([_as_dict(value) for value in frame.pop("input")], index=frame.index)
    frame = pd.concat([frame, described], axis=1)
    return frame.iloc[::-1].reset_index(drop=True)


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, dict) else {}


def read_serving_version(engine: Engine, model: str, recent: int = 100) -> str | None:
    """The version that answered most of ``model``'s last ``recent`` predictions (None: none logged).

    What serves is what answers: a worker that could not load a promoted version keeps answering
    with an earlier one, and its window is the one worth checking. Counting a hundred answers,
    not the last one, keeps a pinned request (``X-Model-Version``) from moving the monitor.
    """
    latest = (
        select(predictions.c.id, predictions.c.version)
        .where(predictions.c.model == model)
        .order_by(predictions.c.id.desc())
        .limit(recent)
        .subquery()
    )
    query = (
        select(latest.c.version, func.count().label("answers"), func.max(latest.c.id).label("newest"))
        .group_by(latest.c.version)
        .order_by(func.count().desc(), func.max(latest.c.id).desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else str(row.version)


def read_feedback(engine: Engine, model: str, since: datetime | None = None) -> pd.DataFrame:
    """Feedback labels of ``model`` (text, label, request id, predicted label, version, time, source)."""
    query = select(feedback).where(feedback.c.model == model)
    if since is not None:
        query = query.where(feedback.c.created >= since)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query.order_by(feedback.c.id))]
    columns = [
        "id",
        "request_id",
        "created",
        "model",
        "text",
        "label",
        "predicted_label",
        "version",
        "source",
    ]
    return pd.DataFrame(rows, columns=columns)


def record_check(engine: Engine, row: dict[str, Any]) -> None:
    """Append one check to the history."""
    with engine.begin() as conn:
        conn.execute(insert(drift_checks).values(**row))


def read_checks(engine: Engine, model: str, limit: int = 50) -> list[dict[str, Any]]:
    """The latest checks of ``model``, newest first."""
    return _read_latest(engine, drift_checks, model, limit)


def record_retrain(engine: Engine, row: dict[str, Any]) -> int:
    """Append one retrain decision to the audit table; returns its id."""
    with engine.begin() as conn:
        key = conn.execute(insert(retrain_runs).values(**row)).inserted_primary_key
    return int(key[0]) if key is not None else 0


def read_retrains(
    engine: Engine, model: str, limit: int = 50, *, trained: bool = False, adaptation: bool | None = None
) -> list[dict[str, Any]]:
    """The latest retrain decisions of ``model``, newest first: with ``trained``, only those that
    trained something (not skipped); with ``adaptation`` True or False, only adaptations or only
    retrains on labels.

    Skipped runs can be many (one a check while the drift lasts and no label arrives, for a strategy
    the gate could only refuse): filtered here, they never push a run that trained out of ``limit``.
    """
    conditions = [retrain_runs.c.outcome != "skipped"] if trained else []
    if adaptation is not None:
        adapted = retrain_runs.c.trigger.endswith(ADAPT_TRIGGER)
        conditions.append(adapted if adaptation else ~adapted)
    return _read_latest(engine, retrain_runs, model, limit, *conditions)


def _read_latest(
    engine: Engine, table: Table, model: str, limit: int, *conditions: ColumnElement[bool]
) -> list[dict[str, Any]]:
    query = select(table).where(table.c.model == model, *conditions)
    query = query.order_by(table.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]
