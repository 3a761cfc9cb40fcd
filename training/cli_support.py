"""Small helpers for commands that show progress on a rich console."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from rich.console import Console


@contextlib.contextmanager
def step(console: Console, title: str) -> Iterator[None]:
    """Print a step's title, then its duration when it ends."""
    console.rule(f"[bold]{title}")
    start = time.perf_counter()
    yield
    console.print(f"    [dim]{title.split(' ', 1)[0]} done in {time.perf_counter() - start:.1f} s[/]")


def refit_command(*args: str) -> list[str]:
    """The `refit` command line run by this interpreter (a child process needs no PATH entry)."""
    return [sys.executable, "-c", "from training.cli import main; main()", *args]
