"""A child process's start-up on a fresh inference log, in a module of its own: a spawned child
imports the module of its target, and this one imports no model code."""

from __future__ import annotations

from typing import Any


def create_tables_in_child(url: str, start: Any, results: Any) -> None:
    """What every worker and the monitor do at start-up on a fresh log."""
    import logging

    from service.inference_log_db import create_log_engine, create_tables

    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    engine = create_log_engine(url)
    start.wait()
    try:
        create_tables(engine)
        results.put(("ok", warnings))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))
