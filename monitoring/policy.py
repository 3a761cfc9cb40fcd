"""What to do after a check: nothing, alert, or retrain (hysteresis, cooldown, mode). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Decision:
    """The policy's verdict and why."""

    action: str  # "none", "alert", "report" (alert mode: judge an adaptation, promote nothing), "retrain"
    reason: str
    streak: int  # consecutive drifted checks of the production version


def drift_streak(checks: Sequence[dict[str, Any]], version: str | None) -> int:
    """Consecutive drifted checks of ``version``, newest first; windows too small are skipped."""
    streak = 0
    for check in checks:
        if check.get("version") != version or check["status"] in ("insufficient_data", "skipped"):
            continue
        if check["status"] != "drift":
            break
        streak += 1
    return streak


def decide(
    checks: Sequence[dict[str, Any]],
    version: str | None,
    *,
    persist_checks: int,
    cooldown_s: float,
    mode: str,
    last_retrain: datetime | None,
    now: datetime,
) -> Decision:
    """Decide after a check.

    Args:
        checks: the model's checks, newest first (the one just made included).
        version: the production version the checks are about.
        persist_checks: drifted checks in a row needed before acting.
        cooldown_s: seconds after the last retrain during which no new one starts.
        mode: "alert" (never promote: "report" what adapting would do) or "retrain".
        last_retrain: when the last retrain started (None: never).
    """
    streak = drift_streak(checks, version)
    if streak < persist_checks:
        return Decision("none", f"{streak} drifted check(s) in a row; acting at {persist_checks}", streak)
    if last_retrain is not None:
        elapsed = (now - last_retrain).total_seconds()
        if elapsed < cooldown_s:
            return Decision(
                "alert", f"cooldown: last retrain {elapsed:.0f} s ago (< {cooldown_s:.0f} s)", streak
            )
    if mode == "alert":
        return Decision("report", f"drift persisted for {streak} checks; mode is alert", streak)
    return Decision("retrain", f"drift persisted for {streak} checks", streak)
