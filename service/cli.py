"""`refit serve`: validate the serving settings, then become `bentoml serve` (exec) in the foreground."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from training.console import console

SERVICE_IMPORT = "service.app:RefitClassifier"


def serve_command(host: str, port: int) -> list[str]:
    """The `bentoml serve` command line for the Refit service."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE_IMPORT, "--host", host, "--port", str(port)]


def settings_environment(config: Path | None, overrides: dict[str, Any]) -> dict[str, str]:
    """``REFIT_SERVE_*`` variables that give a `bentoml serve` child these settings."""
    env = {"REFIT_SERVE_CONFIG": str(config.resolve())} if config else {}
    for key, value in overrides.items():
        if value is not None:
            text = json.dumps(value) if isinstance(value, list | bool) else str(value)
            env[f"REFIT_SERVE_{key.upper()}"] = text
    return env


def serve(
    model: Annotated[
        str | None, typer.Option(help="Registry model name; its production version is served.")
    ] = None,
    home: Annotated[Path | None, typer.Option(help="Registry home (BentoML home).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    backend: Annotated[str | None, typer.Option(help="auto, torch or onnx.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes (default: one per GPU of --gpus, one on CUDA without it; "
            "on CPU one per core, at most 4)."
        ),
    ] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs to use, one worker each.")] = None,
    config: Annotated[Path | None, typer.Option(help="Serving settings file (YAML or TOML).")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="The certificate's private key (PEM).")] = None,
) -> None:
    """Serve the production version of a model over HTTP (BentoML), following its promotions."""
    from service.settings import load_serve_settings

    overrides: dict[str, object] = {
        "model": model,
        "registry_home": home,
        "host": host,
        "port": port,
        "backend": backend,
    }
    overrides |= {"workers": workers, "gpus": gpus}
    overrides |= {
        "ssl_certfile": ssl_certfile and ssl_certfile.resolve(),
        "ssl_keyfile": ssl_keyfile and ssl_keyfile.resolve(),
    }
    settings = load_serve_settings(config, overrides)  # a bad value fails here, with its reason
    overrides["model"] = settings.model  # the registry's only model when none was named
    env = {**os.environ, **settings_environment(config, overrides)}
    url = f"{settings.scheme}://{settings.host}:{settings.port}"
    console.print(f"Serving [bold]{settings.model}[/] (production) from {settings.home} at {url}")
    console.print(f"  POST {url}/classify   GET {url}/model   {url}/docs   {url}/metrics")
    sys.stdout.flush()
    command = serve_command(settings.host, settings.port)
    # Become the server: a process manager's SIGTERM then reaches it (it drains and flushes the
    # inference log), and no child is left behind on the port.
    os.execve(command[0], command, env)


def register(app: typer.Typer) -> None:
    """Add the serving commands to the root `refit` app (the ``refit.cli`` entry point)."""
    app.command()(serve)
