"""The training half of the demo: generate data, climb the `auto` ladder, export to ONNX.

`refit demo` (demo/loop.py) runs the whole loop on top of this; `refit demo-train` runs this
half alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from demo.kinds import TEXT_DEMO, DemoKind
from training.config import TrainingConfig
from training.console import render_versions, step
from training.onnx_export import export_version
from training.pipeline import train_model
from training.registry import ModelRegistry, ModelVersion

DEMO_MODEL = TEXT_DEMO.model


@dataclass
class DemoVersion:
    """The demo's data files and the version trained on them."""

    paths: dict[str, Path]
    version: ModelVersion
    registry: ModelRegistry


def train_demo_version(
    out: Path, console: Console, steps: str = "1/2 2/2", kind: DemoKind = TEXT_DEMO
) -> DemoVersion:
    """Generate the demo data under ``out/data`` and train a production version of the demo's model.

    Args:
        out: the demo's working directory (the registry is ``out/bentoml``).
        console: where progress goes.
        steps: the step numbers shown for the two steps (data, training + export).
        kind: the text demo (support tickets) or the image demo (surface inspection).

    Returns:
        The files written and the registered, ONNX-exported version.
    """
    data_step, train_step = steps.split()
    registry = ModelRegistry(out / "bentoml")
    with step(console, f"{data_step} generating demo data"):
        paths = kind.write_data(out / "data")
        console.print(f"    {len(paths)} data sets in {out / 'data'}")
    with step(console, f"{train_step} training v1 ({kind.training_step}), ONNX export"):
        config = TrainingConfig(name=kind.model, **kind.training)
        outcome = train_model(paths["train"], config, registry=registry, console=console)
        version = outcome.version
        assert version is not None  # the demo runs in one process
        console.print(
            f"    registered {version.tag} ({version.manifest['strategy']}, {version.stage}): "
            f"test accuracy {outcome.test.accuracy:.4f}, macro-F1 {outcome.test.macro_f1:.4f}"
        )
        record = export_version(version, quantize=True)
        q = record["int8"]
        kept = "kept" if q["kept"] else "not kept: over 1 point"
        console.print(
            f"    ONNX parity max |diff| {record['parity_max_abs_diff']:.1e}; int8 ({q['method']}) "
            f"accuracy change {q['accuracy_change']:+.4f} on the test split ({kept})"
        )
    return DemoVersion(paths=paths, version=version, registry=registry)


def run_training_demo(out: Path, console: Console) -> None:
    """Train and export one demo version, then print the version table (`refit demo-train`)."""
    start = time.perf_counter()
    trained = train_demo_version(out, console)
    console.print(render_versions(trained.registry.versions(DEMO_MODEL)))
    console.print(
        f"[bold green]finished in {time.perf_counter() - start:.0f} s[/]; report: "
        f"{trained.version.path / 'report.html'}; registry: {trained.registry.home} "
        f"(BENTOML_HOME={trained.registry.home} refit models list)"
    )
