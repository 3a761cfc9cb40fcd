"""Terminal output shared by every `refit` command and the demo: one console, steps, the version table,
and transformers kept from printing its own load reports and progress bars."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

# One console for the whole CLI: `training.cli.main` widens it once when the output is a log.
console = Console()


def quiet_transformers() -> None:
    """Silence transformers' per-load reports and progress bars (CLI and benchmark entry points).

    Before transformers is imported, its own environment variables do it (a value the user set
    wins), so a command that loads no model (`refit models list`) does not import it and torch,
    two seconds here, only to quiet them. The processes a command starts inherit the setting.
    """
    if "transformers" not in sys.modules:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def step(console: Console, title: str) -> Iterator[None]:
    """Print a step's title, then its duration when it ends."""
    console.rule(f"[bold]{title}")
    start = time.perf_counter()
    yield
    console.print(f"    [dim]{title.split(' ', 1)[0]} done in {time.perf_counter() - start:.1f} s[/]")


def render_versions(versions: list[Any]) -> Table:
    """A table comparing versions: strategy, metrics and the test set they come from, data, stage.

    Test metrics compare only within one test set; the caption says when the table holds several.
    """
    from training.provenance import describe_test_set

    table = Table(title="model versions")
    columns = ("tag", "stage", "strategy", "test acc", "macro-F1", "test set", "data", "parent", "created")
    longest_tag = max((len(v.tag) for v in versions), default=0)
    for column in columns:
        # A tag or a version is what one copies into the next command: the other columns wrap, and
        # a test file's name or fingerprint too long for its column folds rather than being cut.
        whole = column in ("tag", "parent")
        table.add_column(
            column, no_wrap=whole, min_width=longest_tag if column == "tag" else None, overflow="fold"
        )
    test_sets = {str(v.manifest.get("test_set", {}).get("fingerprint")) for v in versions}
    for v in versions:
        m = v.manifest
        table.add_row(
            v.tag,
            v.stage,
            m.get("strategy", "?"),
            f"{m.get('test_accuracy', float('nan')):.4f}",
            f"{m.get('test_macro_f1', float('nan')):.4f}",
            describe_test_set(m.get("test_set")),
            str(m.get("data_fingerprint", ""))[7:19],
            str(m.get("parent_version") or "-"),
            v.created[:19].replace("T", " "),
        )
    if len(test_sets) > 1:
        table.caption = (
            f"{len(test_sets)} different test sets: compare test metrics only between rows with the same one"
        )
    return table
