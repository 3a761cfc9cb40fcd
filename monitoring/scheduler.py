"""`refit monitor`: APScheduler runs the check at an interval, one at a time across processes.

The job lives in a SQLAlchemy job store in the inference log's database, so a restarted monitor
finds it (missed runs are coalesced into one). Several monitor processes may run (one per host,
say): each run first takes a lease row in the same database, so only one check runs at a time.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from monitoring.monitor import Monitor
from monitoring.settings import MonitorSettings, load_monitor_settings
from monitoring.store import acquire_lease, release_lease

logger = logging.getLogger(__name__)

JOBS_TABLE = "refit_scheduler_jobs"


def job_id(model: str) -> str:
    """The scheduler job's id for a model."""
    return f"refit-drift-check:{model}"


@functools.cache
def _monitor(config: str | None) -> Monitor:
    return Monitor(load_monitor_settings(Path(config) if config else None))


def scheduled_check(config: str | None = None) -> None:
    """The job: take the lease, run one pass, give the lease back.

    Module-level with plain arguments, because the job store keeps a reference to it.
    """
    try:
        monitor = _monitor(config)
        name = f"check:{monitor.settings.model}"
        if not acquire_lease(monitor.engine, name, monitor.settings.lease_s):
            logger.info("another monitor holds the lease for %s; skipping this run", monitor.settings.model)
            return
        try:
            monitor.run()
        finally:
            release_lease(monitor.engine, name)
    except SQLAlchemyError as exc:  # the database is down: the next interval tries again
        logger.error("monitor database unavailable, retrying at the next interval: %s", exc)
        _monitor.cache_clear()


def start_scheduler(settings: MonitorSettings, config: str | None) -> Any:
    """Start a background scheduler whose check job lives in the database job store.

    The job is added only when the store does not have it yet, so a restart keeps its schedule
    (and a run missed while the monitor was down runs once, coalesced).
    """
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    store = SQLAlchemyJobStore(url=settings.resolved_log_url, tablename=JOBS_TABLE)
    defaults = {"coalesce": True, "max_instances": 1, "misfire_grace_time": int(settings.interval_s * 10)}
    scheduler = BackgroundScheduler(jobstores={"default": store}, job_defaults=defaults, timezone="UTC")
    scheduler.start(paused=True)
    job = scheduler.get_job(job_id(settings.model))
    if job is None:
        scheduler.add_job(
            scheduled_check, "interval", seconds=settings.interval_s, id=job_id(settings.model), args=[config]
        )
    elif job.trigger.interval.total_seconds() != settings.interval_s:
        scheduler.reschedule_job(job.id, trigger="interval", seconds=settings.interval_s)
    scheduler.resume()
    return scheduler


def run_monitor(settings: MonitorSettings, config: str | None) -> None:
    """Serve the metrics and run the scheduler until interrupted."""
    from prometheus_client import start_http_server

    monitor = _monitor(config)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=monitor.metrics.registry)
    scheduler = start_scheduler(settings, config)
    logger.info("monitoring %s every %.0f s", settings.model, settings.interval_s)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        scheduler.shutdown(wait=False)
