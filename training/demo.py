"""The main job on embedded defaults: generate data, climb the `auto` ladder, list, export."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from training.cli_support import step
from training.config import TrainingConfig
from training.demo_data import write_demo_data
from training.onnx_export import export_version
from training.pipeline import train_model
from training.registry import ModelRegistry

DEMO_MODEL = "support-tickets"


def run_demo(out: Path, console: Console) -> None:
    """Run the training half of Refit's loop on generated support tickets.

    Each run registers a new version of ``support-tickets`` under ``out`` (so it can be run
    again), exports it to ONNX with an int8 variant, and prints the version table.
    """
    from training.cli import render_versions

    start = time.perf_counter()
    registry = ModelRegistry(out / "bentoml")
    with step(console, "1/4 generating demo data"):
        paths = write_demo_data(out / "data")
    console.print(f"    {len(paths)} files in {out / 'data'}")
    with step(console, "2/4 training (auto ladder: baseline -> head -> lora -> full)"):
        config = TrainingConfig(name=DEMO_MODEL, strategy="auto")
        outcome = train_model(paths["train"], config, registry=registry, console=console)
    version = outcome.version
    assert version is not None  # the demo runs in one process
    console.print(
        f"    registered {version.tag} ({version.manifest['strategy']}, {version.stage}): "
        f"test accuracy {outcome.test.accuracy:.4f}, macro-F1 {outcome.test.macro_f1:.4f}"
    )
    with step(console, "3/4 exporting to ONNX (parity check, int8 quantisation)"):
        record = export_version(version, quantize=True)
    console.print(
        f"    parity max |diff| {record['parity_max_abs_diff']:.1e}; int8 accuracy change "
        f"{record['int8']['accuracy_change']:+.4f}"
    )
    with step(console, "4/4 versions"):
        console.print(render_versions(registry.versions(DEMO_MODEL)))
    console.print(
        f"[bold green]demo finished in {time.perf_counter() - start:.0f} s[/]; report: "
        f"{version.path / 'report.html'}; registry: {registry.home} "
        f"(BENTOML_HOME={registry.home} refit models list)"
    )
