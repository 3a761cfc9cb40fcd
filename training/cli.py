"""The `refit` command line: thin commands that parse, load config, call one library function.

The serving and monitoring packages and the demo add their commands through the ``refit.cli``
entry-point group (each entry point is a function taking the root Typer app), so this module never
imports them and training stays upstream of service and monitoring.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.table import Table

from training.console import console, render_versions
from training.errors import ConfigError, RefitError, RegistryError

if TYPE_CHECKING:
    from training.registry import ModelRegistry, ModelVersion

app = typer.Typer(help="Refit: transfer learning in production.", no_args_is_help=True)
models_app = typer.Typer(
    help="List, inspect, promote, roll back, export and delete versions.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


def show_version(value: bool) -> None:
    """Print the installed Refit's version and exit (``--version``)."""
    if value:
        console.print(f"refit {version('refit')}")
        raise typer.Exit()


@app.callback()
def root(
    show: Annotated[
        bool,
        typer.Option("--version", callback=show_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Refit: transfer learning in production."""


HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Registry home (BentoML home); default $BENTOML_HOME or ~/bentoml."),
]


def _registry(home: Path | None) -> Any:
    from training.registry import ModelRegistry

    return ModelRegistry(home)


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """Turn ``key=value`` strings into a dict, values parsed as YAML scalars or lists."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"Expected --set KEY=VALUE, found {pair!r}.")
        values[key.strip()] = yaml.safe_load(raw)
    return values


@app.command()
def train(
    data: Annotated[
        Path,
        typer.Argument(
            help="Labelled data: CSV (comma, semicolon or tab separated), TSV, JSON or Parquet; "
            "or a folder of class folders of images."
        ),
    ],
    strategy: Annotated[
        str | None,
        typer.Option(
            help="baseline|head|partial|lora|full|auto, or with a target_file "
            "bn-adapt|tent|self-train|dann|tapt|spelling"
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Registry model name.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML or TOML config file.")] = None,
    base_model: Annotated[
        str | None, typer.Option(help="'minilm', a local HF directory or a hub id.")
    ] = None,
    test_file: Annotated[
        Path | None, typer.Option(help="Held-out test data (else a stratified split).")
    ] = None,
    text_column: Annotated[str | None, typer.Option()] = None,
    label_column: Annotated[str | None, typer.Option()] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    learning_rate: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    assignments: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Any config key: --set lora_r=8")
    ] = None,
    promote: Annotated[bool, typer.Option(help="Make the new version production.")] = False,
    export_onnx: Annotated[
        bool, typer.Option(help="Also export the new version to ONNX (with its parity check).")
    ] = False,
    quantize: Annotated[
        bool,
        typer.Option(
            help="Also an int8 export, as `refit models export --quantize` (implies --export-onnx)."
        ),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Fine-tune a model on DATA and register a new version."""
    from training.config import load_training_config
    from training.pipeline import train_model

    overrides = parse_assignments(assignments or [])
    flags = {
        "strategy": strategy,
        "name": name,
        "base_model": base_model,
        "test_file": test_file,
        "text_column": text_column,
        "label_column": label_column,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
    }
    cfg = load_training_config(config, {**overrides, **flags})
    outcome = train_model(data, cfg, registry=_registry(home), promote=promote, console=console)
    v = outcome.version
    if v is None:  # a non-main process of `accelerate launch`
        return
    from training.provenance import describe_test_set

    for warning in outcome.warnings:
        console.print(f"[yellow]data warning:[/] {warning}")
    console.print(
        f"[green]registered[/] {v.tag} ({v.manifest['strategy']}, stage {v.stage}): "
        f"test accuracy {outcome.test.accuracy:.4f}, macro-F1 {outcome.test.macro_f1:.4f}, "
        f"ECE {outcome.test.ece:.4f} on the test set ({describe_test_set(v.manifest.get('test_set'))})"
        f"\nreport: {v.path / 'report.html'}"
    )
    if outcome.test.missed_defect_rate is not None:
        console.print(f"missed-defect rate {outcome.test.missed_defect_rate:.4f} on the same test set")
    point = v.manifest.get("details", {}).get("operating_point")
    if point:
        from training.operating_point import describe_operating_point

        console.print(f"operating point: {describe_operating_point(point)}")
    if export_onnx or quantize:
        from training.onnx_export import export_version

        record = export_version(v, quantize=quantize)
        console.print(f"exported to ONNX: parity max |diff| {record['parity_max_abs_diff']:.2e}")
        _print_int8(record)


@models_app.command("list")
def list_models(
    name: Annotated[str | None, typer.Argument(help="Model name; all models when omitted.")] = None,
    home: HomeOption = None,
) -> None:
    """Compare the versions of one or all models."""
    registry = _registry(home)
    names = [name] if name else registry.names()
    versions = [v for n in names for v in registry.versions(n)]
    if not versions:
        console.print(f"no versions found in {registry.home}")
        return
    console.print(render_versions(versions))


@models_app.command("show")
def show_model(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION|:STAGE]")], home: HomeOption = None
) -> None:
    """Show one version's manifest, metrics, stage and path."""
    from training.artifacts import read_metrics
    from training.onnx_files import read_export_record
    from training.provenance import describe_adaptation, describe_test_set

    version = _registry(home).get(ref)
    test = read_metrics(version)["test"]
    table = Table(title=version.tag, show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key in (
        "strategy",
        "base_model",
        "data_fingerprint",
        "parent_version",
        "created",
        "trainable_params",
        "train_seconds",
    ):
        table.add_row(key, str(version.manifest.get(key)))
    table.add_row("stage", version.stage)
    table.add_row("labels", ", ".join(version.manifest.get("labels", [])))
    table.add_row(
        "test",
        f"accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}, ECE {test['ece']:.4f}",
    )
    table.add_row("test set", describe_test_set(version.manifest.get("test_set")))
    if adaptation := version.manifest.get("adaptation"):
        table.add_row("adapted", describe_adaptation(adaptation))
    record = read_export_record(version)
    table.add_row("onnx", f"{record['file']}: {describe_export(record)}" if record else "not exported")
    if record is not None:
        table.add_row("int8", describe_int8(record) or "not quantised (`refit models export --quantize`)")
    table.add_row("path", str(version.path))
    console.print(table)


def _print_export_as_production(record: dict[str, Any] | None, tag: str) -> None:
    if record is not None:
        made = " and quantised" if "int8" in record else ""
        console.print(f"exported{made} {tag} as production was, for the services that follow it")


@models_app.command("promote")
def promote_model(ref: Annotated[str, typer.Argument(help="NAME:VERSION")], home: HomeOption = None) -> None:
    """Make a version production once it loads and answers (the previous one is archived)."""
    from training.promotion import export_as_production, promote_checked

    registry = _registry(home)
    target = registry.get(ref)
    _print_export_as_production(export_as_production(registry, target), target.tag)
    version = promote_checked(registry, ref, reason="refit models promote")
    console.print(f"[green]{version.tag} is now production[/]")


@models_app.command("rollback")
def rollback_model(name: Annotated[str, typer.Argument()], home: HomeOption = None) -> None:
    """Restore the previous production version."""
    from training.promotion import export_as_production, rollback_checked

    registry = _registry(home)
    target = registry.rollback_target(name)
    _print_export_as_production(export_as_production(registry, target), target.tag)
    version = rollback_checked(registry, name, reason="refit models rollback")
    console.print(f"[green]rolled back: {version.tag} is production again[/]")


@models_app.command("export")
def export_model(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION|:STAGE]")],
    quantize: Annotated[
        bool,
        typer.Option(
            help="Also write an int8 model: dynamic for text, static with calibration on training "
            "images for images; not kept if it loses more than 1 point of accuracy."
        ),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Export a version to ONNX and check logits parity against torch."""
    from training.onnx_export import export_version

    version = _registry(home).get(ref)
    record = export_version(version, quantize=quantize)
    console.print(f"[green]exported[/] {version.tag}: {describe_export(record)}")
    _print_int8(record)


def describe_export(record: dict[str, Any]) -> str:
    """One line of an export record: parity against torch and accuracy on the test split."""
    diff, tolerance = record["parity_max_abs_diff"], record["parity_tolerance"]
    accuracy, rows = record["accuracy"], record["parity_rows"]
    return (
        f"parity max |diff| {diff:.2e} (tolerance {tolerance:.0e}), "
        f"accuracy {accuracy:.4f} on the test split ({rows} rows)"
    )


def describe_int8(record: dict[str, Any]) -> str:
    """One line of an export record's int8 model, or "" when it has none."""
    if "int8" not in record:
        return ""
    q = record["int8"]
    kept = "kept" if q["kept"] else "[red]not kept[/]: it loses more than 1 point"
    return (
        f"int8 ({q['method']}): accuracy {q['accuracy']:.4f} ({q['accuracy_change']:+.4f}) "
        f"on the same rows, {q['size_mb']} MB vs {q['fp32_size_mb']} MB; {kept}"
    )


def _print_int8(record: dict[str, Any]) -> None:
    line = describe_int8(record)
    if line:
        console.print(line)


@models_app.command("allow-pin")
def allow_pin(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    home: HomeOption = None,
) -> None:
    """Let requests pin an archived version with X-Model-Version (production and candidates always may)."""
    version = _registry(home).allow_pin(ref, reason="refit models allow-pin")
    console.print(f"requests may now pin {version.tag} ({version.stage})")


@models_app.command("add-label")
def add_label(
    name: Annotated[str, typer.Argument(help="Model name.")],
    labels: Annotated[list[str], typer.Argument(help="New labels that feedback may carry.")],
    home: HomeOption = None,
) -> None:
    """Accept feedback with new labels (a new intent) now, without restarting the service."""
    from training.artifacts import read_labels
    from training.label_variants import matching_label

    registry = _registry(home)
    known = [*read_labels(registry.get(name)), *registry.feedback_labels(name)]
    for label in labels:
        same = matching_label(label, known)
        if same is not None:
            raise RegistryError(
                f"Refusing to add {label!r}: it is {same!r} written another way (case or separators), "
                f"a label {name} already has. Send feedback with {same!r}."
            )
    accepted = registry.add_feedback_labels(name, labels)
    console.print(f"feedback for {name} may now also carry: {', '.join(accepted)}")


@models_app.command("delete")
def delete_model(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    home: HomeOption = None,
) -> None:
    """Delete a version (refused for the production version; warns when rollback would restore it)."""
    registry = _registry(home)
    version = registry.deletable(ref)  # refused before the question, not after it
    note = describe_rollback_loss(registry, version)
    if not yes:
        typer.confirm(f"Delete {version.tag} ({version.stage})?{note}", abort=True)
    registry.delete(version.tag)
    console.print(f"deleted {version.tag}{note}", highlight=False)


def describe_rollback_loss(registry: ModelRegistry, version: ModelVersion) -> str:
    """What deleting ``version`` does to `refit models rollback`, or "" when it restores another."""
    try:
        if registry.rollback_target(version.name).version != version.version:
            return ""
    except RegistryError:
        return ""
    try:
        after = f"it will restore {registry.rollback_target(version.name, {version.version}).tag}"
    except RegistryError:
        after = "there will be no earlier production version to restore"
    return f" It is the version `refit models rollback {version.name}` restores; without it, {after}."


@functools.cache
def load_plugins() -> None:
    """Add the commands of the ``refit.cli`` entry points (`serve`, `monitor`, ...) to the app, once."""
    for entry in entry_points(group="refit.cli"):
        entry.load()(app)


def main(plugins: bool = True) -> None:
    """Console-script entry point: run the app, turning Refit errors into clear messages.

    Args:
        plugins: add the commands of the ``refit.cli`` entry points (`serve`, `monitor`, ...).
            ``python -m monitoring`` registers them itself, for images where the project is
            not pip-installed (a Bento), and passes False.
    """
    from training.console import quiet_transformers
    from training.usage_tracking import turn_off_usage_tracking

    turn_off_usage_tracking()  # this process's saves, and the servers and monitors it starts
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not console.is_terminal:  # logs and `make demo` output: rich would squeeze tables to 80
        console.width = max(console.width, 140)
    quiet_transformers()
    if plugins:
        load_plugins()
    try:
        # Standalone: typer shows a usage error (a missing argument, an unknown option) as a short
        # message with exit code 2, and Ctrl-C as "Aborted!" with 1, whichever click it uses (its
        # own copy since typer 0.2x, which an `except click.ClickException` here does not catch).
        app()
    except RefitError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":  # `accelerate launch -m training.cli train ...`
    main()
