"""`refit feedback list|quarantine|release|purge`: inspect and remove what each API key labelled."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from monitoring.cli import ConfigOption, HomeOption, ModelOption
from training.console import console

SourceOption = Annotated[
    str, typer.Option("--source", help="The API key's name ('anonymous': feedback sent without keys).")
]


def _open(config: Any, model: str | None, home: Any) -> tuple[Any, str]:
    """The inference log's engine and the model's name, once the registry knows the model.

    Raises:
        VersionNotFoundError: no such model (the models there are named); a misspelt name or
            ``--home`` would otherwise read as "no feedback" and create an empty log.
    """
    from monitoring.history import create_monitor_tables
    from monitoring.settings import load_monitor_settings
    from service.inference_log_db import create_log_engine
    from training.registry import ModelRegistry

    settings = load_monitor_settings(config, {"model": model, "registry_home": home})
    ModelRegistry(settings.home).existing_versions(settings.model)
    engine = create_log_engine(settings.resolved_log_url)
    create_monitor_tables(engine)
    return engine, settings.model


def list_sources(model: ModelOption = None, home: HomeOption = None, config: ConfigOption = None) -> None:
    """Feedback per source, operator quarantines, and what the last retrain quarantined or capped."""
    from monitoring.history import ADAPT_TRIGGER, read_retrains
    from monitoring.sources import summarise_sources

    engine, name = _open(config, model, home)
    table = Table("source", "rows", "labels", "first", "last", "status", title=f"feedback of {name}")
    for row in summarise_sources(engine, name):
        # Whether retrains may read the source, not whether one has: rows after the last retrain wait.
        status = f"[red]quarantined[/] ({row['quarantined']})" if row["quarantined"] else "retrains use it"
        when = [f"{t:%Y-%m-%d %H:%M}" if t else "" for t in (row["first"], row["last"])]
        table.add_row(row["source"], str(row["rows"]), str(row["labels"]), *when, status)
    console.print(table)
    last = next((r for r in read_retrains(engine, name, limit=20, trained=True) if r["numbers"]), None)
    if last is None:
        console.print("no retrain has screened this feedback yet")
        return
    numbers = last["numbers"]
    kind = "adaptation" if last["trigger"].endswith(ADAPT_TRIGGER) else "retrain"
    console.print(f"last {kind} ({last['started_at']:%Y-%m-%d %H:%M}, {last['outcome']}):")
    quarantined, capped = numbers.get("quarantined") or {}, numbers.get("capped") or {}
    tested = int(numbers.get("feedback_test_rows") or 0)
    if not quarantined and not capped and not tested:
        console.print("  no feedback quarantined or left out")
    if tested:
        console.print(
            f"  left out {tested} rows on texts of production's test split (the gate tests on them)"
        )
    for reason, rows in quarantined.items():
        console.print(f"  quarantined {rows} rows: {reason}")
    for source, rows in capped.items():
        console.print(f"  left out {rows} rows of {source}: over the per-source share")
    for source, row in (numbers.get("per_source") or {}).items():
        console.print(
            f"  gate rows of {source}: {int(row['rows'])}, production {row['production']:.3f}, "
            f"candidate {row['candidate']:.3f}"
        )


def quarantine(
    source: SourceOption,
    reason: Annotated[str, typer.Option(help="Why (shown by `refit feedback list`).")] = "by an operator",
    model: ModelOption = None,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Keep a source's feedback out of every retrain until released; its rows stay in the log."""
    from monitoring.sources import quarantine_source

    engine, name = _open(config, model, home)
    quarantine_source(engine, name, source, reason)
    console.print(f"feedback of [bold]{source}[/] for {name} is quarantined: retrains leave it out")


def release(
    source: SourceOption, model: ModelOption = None, home: HomeOption = None, config: ConfigOption = None
) -> None:
    """Let a quarantined source's feedback be trained on again."""
    from monitoring.sources import release_source

    engine, name = _open(config, model, home)
    if not release_source(engine, name, source):
        console.print(f"[red]{source} is not quarantined for {name}[/]")
        raise SystemExit(1)
    console.print(f"feedback of [bold]{source}[/] for {name} is trained on again")


def purge(
    source: SourceOption,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    model: ModelOption = None,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete every feedback label a source sent (predictions stay)."""
    from monitoring.sources import purge_source

    engine, name = _open(config, model, home)
    if not yes:
        typer.confirm(f"Delete every feedback label {source} sent for {name}?", abort=True)
    console.print(f"deleted {purge_source(engine, name, source)} feedback rows of [bold]{source}[/]")


def register(app: typer.Typer) -> None:
    """Add `refit feedback ...` to the root app."""
    group = typer.Typer(
        help="Inspect, quarantine and purge feedback by source (API key).", no_args_is_help=True
    )
    group.command("list")(list_sources)
    group.command()(quarantine)
    group.command()(release)
    group.command()(purge)
    app.add_typer(group, name="feedback")
