"""Progress of long steps: a rich bar on a terminal, plain lines everywhere else.

A bar drawn into a log file, a pipe or a child process's output shows nothing; there, a line at
most every ``LINE_EVERY_S`` seconds (and one at the end) says how far a step has come, so that
`refit train` under the monitor or in CI never sits silent for minutes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import track

T = TypeVar("T")

LINE_EVERY_S = 10.0


def track_progress(
    items: Iterable[T],
    description: str,
    total: int,
    unit: str = "",
    console: Console | None = None,
    every_s: float = LINE_EVERY_S,
) -> Iterator[T]:
    """Yield ``items`` while showing how many of ``total`` are done.

    Args:
        items: the work, one step per item.
        description: what is being done ("embedding train").
        total: how many items there are.
        unit: what one item counts as in the plain lines ("batches"); empty: steps.
        console: where to show it; default standard error.
        every_s: off a terminal, the least time between two lines.
    """
    console = console or Console(stderr=True)
    if console.is_terminal:
        yield from track(items, description=description, total=total, transient=True, console=console)
        return
    start = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every_s and done < total:
            console.print(_line(description, done, total, unit, now - start), highlight=False)
            last = now
    if time.perf_counter() - start >= every_s:
        console.print(_line(description, done, total, unit, time.perf_counter() - start), highlight=False)


def _line(description: str, done: int, total: int, unit: str, seconds: float) -> str:
    share = f" ({done / total:.0%})" if total else ""
    return f"{description}: {done:,}/{total:,}{' ' + unit if unit else ''}{share}, {seconds:.0f} s"
