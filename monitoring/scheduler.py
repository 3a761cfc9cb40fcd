"""`refit monitor`: APScheduler runs the check at an interval, one at a time across processes.

The job lives in a SQLAlchemy job store in the inference log's database, so a restarted monitor
finds it (missed runs are coalesced into one). Several monitor processes may run (one per host,
say): each run first takes a lease row in the same database, so only one check runs at a time.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from monitoring.history import acquire_lease, release_lease
from monitoring.monitor import Monitor
from monitoring.settings import MonitorSettings

logger = logging.getLogger(__name__)

JOBS_TABLE = "refit_scheduler_jobs"


def job_id(model: str) -> str:
    """The scheduler job's id for a model."""
    return f"refit-drift-check:{model}"


def job_arguments(settings: MonitorSettings) -> list[str]:
    """The job's arguments: the monitor's whole resolved settings, as JSON.

    The job store keeps them, so each run checks exactly what `refit monitor` was started with
    (its flags included), not whatever the environment of the scheduler thread says.
    """
    return [settings.model_dump_json()]


@functools.cache
def _monitor(settings_json: str) -> Monitor:
    return Monitor(MonitorSettings.model_validate_json(settings_json))


def scheduled_check(settings_json: str) -> None:
    """The job: take the lease, run one pass, give the lease back.

    Module-level with plain arguments, because the job store keeps a reference to it.

    Args:
        settings_json: the monitor's settings, as written by `job_arguments`.
    """
    try:
        monitor = _monitor(settings_json)
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


def start_scheduler(settings: MonitorSettings) -> Any:
    """Start a background scheduler whose check job lives in the database job store.

    The job is added only when the store does not have it yet, so a restart keeps its schedule
    (and a run missed while the monitor was down runs once, coalesced); its settings and interval
    are those of this start. A new job checks at once: waiting an interval (5 minutes by
    default) would leave the metrics without a drift gauge and the console silent.
    """
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    store = SQLAlchemyJobStore(url=settings.resolved_log_url, tablename=JOBS_TABLE)
    defaults = {"coalesce": True, "max_instances": 1, "misfire_grace_time": int(settings.interval_s * 10)}
    scheduler = BackgroundScheduler(jobstores={"default": store}, job_defaults=defaults, timezone="UTC")
    scheduler.start(paused=True)
    args = job_arguments(settings)
    job = scheduler.get_job(job_id(settings.model))
    if job is None:
        scheduler.add_job(
            scheduled_check,
            "interval",
            seconds=settings.interval_s,
            id=job_id(settings.model),
            args=args,
            next_run_time=datetime.now(UTC),
        )
    else:
        scheduler.modify_job(job.id, func=scheduled_check, args=args)
        if job.trigger.interval.total_seconds() != settings.interval_s:
            scheduler.reschedule_job(job.id, trigger="interval", seconds=settings.interval_s)
    scheduler.resume()
    return scheduler


def run_monitor(settings: MonitorSettings) -> None:
    """Serve the metrics and run the scheduler until interrupted."""
    from prometheus_client import start_http_server

    monitor = _monitor(job_arguments(settings)[0])
    if settings.metrics_port:
        start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=monitor.metrics.registry
        )
    scheduler = start_scheduler(settings)
    logger.info("monitoring %s every %.0f s", settings.model, settings.interval_s)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        scheduler.shutdown(wait=False)
