"""Where a version's numbers and weights come from, in words: the test set its metrics were
measured on, and what an adapted version adapted to."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def describe_test_set(test_set: dict[str, Any] | None) -> str:
    """Where a metric comes from: ``file test.csv, 3,080 rows, sha256:1a2b3c4d`` or ``20% split of ...``."""
    if not test_set:
        return "test set not recorded"
    name = Path(str(test_set.get("path") or "the data")).name
    where = (
        f"file {name}"
        if test_set.get("source") == "file"
        else f"{float(test_set.get('fraction') or 0):.0%} split of {name}"
    )
    if test_set.get("groups") is not None and test_set.get("source") != "file":
        where += f" by {test_set.get('group_column')}"
    groups = f" of {int(test_set['groups']):,} groups" if test_set.get("groups") is not None else ""
    rows = f"{int(test_set.get('rows', 0)):,} rows{groups}"
    return f"{where}, {rows}, {str(test_set.get('fingerprint', ''))[:15]}"


def describe_adaptation(adaptation: dict[str, Any]) -> str:
    """What a version adapted to: ``self-train (from head) to 292 inputs of tiles:v1 predictions
    2026-12-06T11:41:13 .. 2026-12-06T11:41:34 (425 rows), sha256:6cf0eb94`` (the target file's
    name where no inference-log window is recorded)."""
    target = adaptation.get("target") or {}
    where = target.get("window") or Path(str(target.get("source") or "a target file")).name
    return (
        f"{adaptation.get('method')} (from {adaptation.get('base_strategy')}) to "
        f"{int(target.get('inputs', 0)):,} inputs of {where}, {str(target.get('fingerprint', ''))[:15]}"
    )
