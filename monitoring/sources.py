"""Feedback by source (the API key that sent it): what each sent, operator quarantine, purge."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, delete, func, insert, or_, select, update

from monitoring.history import quarantined_sources
from service.inference_log_db import feedback, utc_now
from service.keys import ANONYMOUS


def _is_source(source: str) -> Any:
    """The SQL condition for feedback rows of ``source`` (``anonymous``: rows without a key)."""
    if source == ANONYMOUS:
        return or_(feedback.c.source.is_(None), feedback.c.source == ANONYMOUS)
    return feedback.c.source == source


def summarise_sources(engine: Engine, model: str) -> list[dict[str, Any]]:
    """Per source of ``model``'s feedback: rows, distinct labels, first and last time, quarantine reason."""
    source = func.coalesce(feedback.c.source, ANONYMOUS)
    query = (
        select(
            source.label("source"),
            func.count().label("rows"),
            func.count(func.distinct(feedback.c.label)).label("labels"),
            func.min(feedback.c.created).label("first"),
            func.max(feedback.c.created).label("last"),
        )
        .where(feedback.c.model == model)
        .group_by(source)
        .order_by(func.count().desc())
    )
    held = read_quarantined(engine, model)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    for row in rows:
        row["quarantined"] = held.get(row["source"])
    known = {row["source"] for row in rows}
    rows += [
        {"source": s, "rows": 0, "labels": 0, "first": None, "last": None, "quarantined": reason}
        for s, reason in held.items()
        if s not in known
    ]
    return rows


def read_quarantined(engine: Engine, model: str) -> dict[str, str]:
    """The sources an operator quarantined for ``model``, with the reason given."""
    query = select(quarantined_sources).where(quarantined_sources.c.model == model)
    with engine.connect() as conn:
        return {r.source: r.reason for r in conn.execute(query)}


def quarantine_source(engine: Engine, model: str, source: str, reason: str) -> None:
    """Keep ``source``'s feedback out of every retrain of ``model`` until released (rows stay)."""
    key = (quarantined_sources.c.model == model) & (quarantined_sources.c.source == source)
    with engine.begin() as conn:
        if conn.execute(update(quarantined_sources).where(key).values(reason=reason)).rowcount == 0:
            conn.execute(
                insert(quarantined_sources).values(model=model, source=source, reason=reason, since=utc_now())
            )


def release_source(engine: Engine, model: str, source: str) -> bool:
    """Let ``source``'s feedback be trained on again; False when it was not quarantined."""
    key = (quarantined_sources.c.model == model) & (quarantined_sources.c.source == source)
    with engine.begin() as conn:
        return bool(conn.execute(delete(quarantined_sources).where(key)).rowcount)


def purge_source(engine: Engine, model: str, source: str) -> int:
    """Delete every feedback row ``source`` sent for ``model``; the number deleted."""
    with engine.begin() as conn:
        query = delete(feedback).where((feedback.c.model == model) & _is_source(source))
        return int(conn.execute(query).rowcount)
