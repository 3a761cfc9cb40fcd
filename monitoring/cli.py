"""`refit monitor`, `refit drift`, `refit retrain`: thin commands over monitoring.Monitor."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from training.console import console
from training.listen import require_free_port

ConfigOption = Annotated[Path | None, typer.Option("--config", help="Monitor settings file (YAML or TOML).")]
ModelOption = Annotated[str | None, typer.Option("--model", help="Registry model name.")]
HomeOption = Annotated[Path | None, typer.Option("--home", help="Registry home (BentoML home).")]


UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_seconds(text: str, bare_unit: str) -> float:
    """Seconds in '90s', '30m', '2h', '1d', or a bare number of ``bare_unit``.

    Raises:
        typer.BadParameter: any other form.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise typer.BadParameter(f"expected a duration like 30s, 30m, 2h or 1d; found {text!r}")
    return float(match.group(1)) * UNIT_SECONDS[match.group(2) or bare_unit]


def parse_duration(text: str) -> float:
    """Minutes in '30m', '2h', '1d', '90s' or '45' (minutes).

    Raises:
        typer.BadParameter: any other form.
    """
    return parse_seconds(text, "m") / 60


def _settings(config: Path | None, model: str | None, home: Path | None, **more: object):  # type: ignore[no-untyped-def]
    from monitoring.settings import load_monitor_settings

    return load_monitor_settings(config, {"model": model, "registry_home": home, **more})


def drift(
    since: Annotated[str | None, typer.Option(help="Window: predictions of the last 30m / 2h / 1d.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the HTML report here.")] = None,
    model: ModelOption = None,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Run one drift check now and print the per-feature result (no retraining)."""
    from monitoring.monitor import Monitor
    from monitoring.report import shown_columns

    minutes = parse_duration(since) if since else None
    settings = _settings(config, model, home)
    monitor = Monitor(settings)
    outcome = monitor.checker.check(minutes=minutes, report=report)
    monitor.publish(outcome)
    result = outcome.result
    console.print(
        f"[bold]{settings.model}:{outcome.version}[/] window {result.window_size}: "
        f"[{'red' if result.drifted else 'green'}]{result.status}[/] (share {result.share:.2f})"
    )
    if result.status == "insufficient_data":
        window = f"the last {since}" if since else "the window"
        console.print(
            f"{result.window_size} predictions to test in {window}, fewer than min_window "
            f"({settings.min_window}): no test was run. Widen --since, or wait for more traffic."
        )
    if outcome.production and outcome.production != outcome.version:
        console.print(
            f"[red]production is {outcome.production}, but {outcome.version} answered the last logged "
            "predictions: either no request has reached production since its promotion (the service "
            "is stopped or idle), or the service could not load it (see its /model and refit_degraded)[/]"
        )
    if outcome.estimated_accuracy is not None:
        observed = "n/a" if outcome.observed_accuracy is None else f"{outcome.observed_accuracy:.3f}"
        console.print(
            f"estimated accuracy {outcome.estimated_accuracy:.3f}, "
            f"observed {observed} ({outcome.labelled} labels)"
        )
        colour = "green" if outcome.estimate_trusted else "red"
        console.print(f"[{colour}]estimate: {outcome.estimate_note}[/]")
    if result.columns:
        table = Table("feature", "test", "p-value", "level", "drifted", title="strongest evidence first")
        shown = shown_columns(result.columns)
        for c in shown:
            table.add_row(
                c.column, c.method, f"{c.score:.2e}", f"{c.threshold:.2e}", "yes" if c.drifted else ""
            )
        console.print(table)
        if len(shown) < len(result.columns):
            console.print(f"{len(result.columns) - len(shown)} more class-probability tests, none drifted")
    if outcome.report:
        console.print(f"report: {outcome.report}")
    console.print(f"check took {outcome.seconds:.2f} s (tests {result.seconds:.2f} s)")


def retrain(
    model: ModelOption = None,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Retrain now on the training data plus feedback, through the same promotion gate."""
    from monitoring.monitor import Monitor

    logging.getLogger("monitoring.candidate").setLevel(logging.INFO)  # the child's progress lines

    result = Monitor(_settings(config, model, home)).retrain("manual")
    console.print(f"retrain: [bold]{result.outcome}[/] ({result.reason})")
    for key, value in (result.numbers.to_json() if result.numbers else {}).items():
        console.print(f"  {key}: {value}")
    if result.outcome == "failed":
        raise SystemExit(1)


def adapt(
    since: Annotated[str | None, typer.Option(help="Window: predictions of the last 30m / 2h / 1d.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Train and judge the adaptation; promote nothing.")
    ] = False,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="bn-adapt, tent, self-train, dann, tapt or spelling "
            "(default: self-train for images, spelling for texts); the gate promotes tent, dann "
            "and tapt only on held-out feedback labels that show a gain (adapt_label_free_strategies)."
        ),
    ] = None,
    model: ModelOption = None,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Adapt production to the latest window of live inputs, without labels, through the gate."""
    from monitoring.monitor import Monitor

    logging.getLogger("monitoring.candidate").setLevel(logging.INFO)  # the child's progress lines
    minutes = parse_duration(since) if since else None
    settings = _settings(config, model, home, adapt_strategy=strategy)
    result = Monitor(settings).adapt("manual", minutes=minutes, promote=not dry_run)
    console.print(f"adapt: [bold]{result.outcome}[/] ({result.reason})")
    for key, value in (result.numbers.to_json() if result.numbers else {}).items():
        console.print(f"  {key}: {value}")
    if result.outcome == "failed":
        raise SystemExit(1)


def monitor(
    model: ModelOption = None,
    home: HomeOption = None,
    config: ConfigOption = None,
    interval: Annotated[
        str | None, typer.Option(help="Time between checks: 300 (seconds), 30s, 5m, 1h.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="alert (report) or retrain (act).")] = None,
    port: Annotated[int | None, typer.Option(help="Port of the Prometheus metrics.")] = None,
) -> None:
    """Check for drift on a schedule, export metrics, and retrain (or adapt) when drift persists."""
    from monitoring.scheduler import run_monitor

    # The monitor's own log says what each check found and what a retrain is doing.
    logging.getLogger("monitoring").setLevel(logging.INFO)
    interval_s = None if interval is None else parse_seconds(interval, "s")
    settings = _settings(config, model, home, interval_s=interval_s, mode=mode, metrics_port=port)
    if settings.metrics_port:
        require_free_port(settings.metrics_host, settings.metrics_port, "pass --port (0: no metrics)")
    console.print(
        f"monitoring [bold]{settings.model}[/] every {settings.interval_s:.0f} s, mode {settings.mode}; "
        f"metrics on :{settings.metrics_port}/metrics; `evidently ui --workspace {settings.workspace_path}`"
    )
    run_monitor(settings)


def register(app: typer.Typer) -> None:
    """Add the monitoring commands to the root `refit` app (the ``refit.cli`` entry point)."""
    app.command()(monitor)
    app.command()(drift)
    app.command()(retrain)
    app.command()(adapt)
