"""`refit demo`, `refit demo-data`, `refit demo-train`: the demo's commands (a ``refit.cli`` entry point)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from training.console import console

OutOption = Annotated[Path, typer.Option(help="Working directory (emptied if an earlier demo made it).")]


def demo(
    out: OutOption = Path("demo-output"),
    keep: Annotated[
        bool, typer.Option(help="Leave the service, monitor and UI running until Ctrl-C.")
    ] = False,
    images: Annotated[
        bool,
        typer.Option(
            "--images",
            help="Visual inspection instead of support tickets: generated surfaces with scratches, "
            "spots and cracks; a darker light and a new defect type as the drift.",
        ),
    ] = False,
) -> None:
    """The whole loop on generated data: train, serve, drift, retrain, promote, swap; exit 0 if it closed."""
    from demo.kinds import IMAGE_DEMO, TEXT_DEMO
    from demo.loop import run_loop_demo

    stop_on_sigterm()
    code = run_loop_demo(out, console, keep=keep, kind=IMAGE_DEMO if images else TEXT_DEMO)
    if code:
        raise SystemExit(code)


def stop_on_sigterm() -> None:
    """End on SIGTERM as on Ctrl-C, through the demo's cleanup: it stops the service, the monitor
    and the Evidently UI it started, which SIGTERM's default (the process just ends) leaves running."""
    import signal

    def stop(signum: int, _: object) -> None:
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL):
            raise SystemExit(128 + signum)  # Ctrl-C is ignored here (a shell's background job)
        # As Ctrl-C: while traffic flows, asyncio's own handler then cancels it cleanly.
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, stop)


def demo_data(
    out: Annotated[Path, typer.Argument(help="Directory for the CSV files.")] = Path("demo-data"),
) -> None:
    """Write the generated support-ticket dataset and its drifted variants."""
    from demo.data import write_demo_data

    for name, path in write_demo_data(out).items():
        console.print(f"{name}: {path}")


def demo_train(
    out: Annotated[Path, typer.Option(help="Working directory.")] = Path("demo-output"),
) -> None:
    """The training half of `refit demo`: data, `auto` training, ONNX export, versions."""
    from demo.training import run_training_demo

    run_training_demo(out, console)


def register(app: typer.Typer) -> None:
    """Add the demo's commands to the root `refit` app (the ``refit.cli`` entry point)."""
    app.command()(demo)
    app.command("demo-data")(demo_data)
    app.command("demo-train")(demo_train)
