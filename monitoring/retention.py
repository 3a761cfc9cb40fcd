"""Retention of what every check writes: HTML reports and Evidently workspace snapshots.

A check every five minutes writes 288 of each a day; both are kept by count and by age.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)


def prune_reports(directory: Path, prefix: str, keep: int, max_age_days: float) -> int:
    """Delete the reports ``prefix*.html`` beyond the newest ``keep`` or older than the age limit.

    Returns:
        How many files were deleted.
    """
    if not directory.is_dir():
        return 0
    reports = sorted(directory.glob(f"{prefix}*.html"), key=_mtime, reverse=True)
    oldest = time.time() - max_age_days * 86400
    stale = [p for i, p in enumerate(reports) if i >= keep or _mtime(p) < oldest]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def stale_snapshots(snapshot_ids: list[uuid.UUID], keep: int, max_age_days: float) -> list[uuid.UUID]:
    """The snapshots to delete: beyond the newest ``keep``, or older than the age limit.

    Evidently names snapshots with UUIDv7s, whose first 48 bits are the creation time in ms, so
    their order and age need no snapshot to be read.
    """
    newest_first = sorted(snapshot_ids, key=lambda u: u.int, reverse=True)
    oldest_ms = (time.time() - max_age_days * 86400) * 1000
    return [u for i, u in enumerate(newest_first) if i >= keep or (u.int >> 80) < oldest_ms]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
