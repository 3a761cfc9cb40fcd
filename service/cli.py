"""`refit serve`: validate the serving settings, then become `bentoml serve` (exec) in the foreground."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from training.console import console
from training.errors import ConfigError
from training.listen import require_free_port

if TYPE_CHECKING:
    from service.settings import ServeSettings
    from training.registry import ModelVersion

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
    backend: Annotated[str | None, typer.Option(help="auto, torch, onnx or onnx-int8.")] = None,
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
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback --host without API keys.")
    ] = False,
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
    overrides |= {"workers": workers, "gpus": gpus, "insecure": insecure or None}
    overrides |= {
        "ssl_certfile": ssl_certfile and ssl_certfile.resolve(),
        "ssl_keyfile": ssl_keyfile and ssl_keyfile.resolve(),
    }
    settings = load_serve_settings(config, overrides)  # a bad value fails here, with its reason
    refuse_open_exposure(settings)
    production = require_production(settings)
    require_free_port(settings.host, settings.port, "pass --port (or --host)")
    prepare_export(settings, production)
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


def prepare_export(settings: ServeSettings, version: ModelVersion) -> None:
    """Export (on ``onnx-int8``, also quantise) the production version now, when its backend reads
    an export it does not have yet.

    Made here, once, before the workers start: a worker that makes it imports torch for the rest
    of its life (a MiniLM version's two workers held 535 and 729 MB, against 347 MB each with the
    export made first), and the server is not ready until it is done. A version promoted later is
    exported by the monitor's retrain or `refit models promote`, or else by the worker that loads
    it.
    """
    from service.backends import resolve_backend

    backend, _ = resolve_backend(settings.backend, settings.device)
    if backend not in ("onnx", "onnx-int8"):
        return
    from training.onnx_files import QUANTIZED_FILE, find_export

    int8 = backend == "onnx-int8"
    if find_export(version, int8=int8) is not None:
        return
    from training.onnx_export import ensure_export, ensure_int8_export

    kind = "int8 ONNX export" if int8 else "ONNX export"
    with console.status(f"{version.tag} has no {kind} yet: making it (once, with its checks)"):
        path = ensure_int8_export(version) if int8 else ensure_export(version)
    served = "" if path.name == QUANTIZED_FILE or not int8 else " (int8 lost too much accuracy: float serves)"
    console.print(f"made the {kind} of {version.tag}: {path.relative_to(version.path)}{served}")


def require_production(settings: ServeSettings) -> ModelVersion:
    """The production version to serve; refuse to start a server without one: its workers would
    fail at start-up and be restarted, a traceback each, for as long as it runs.

    Raises:
        ConfigError: the registry holds no model.
        VersionNotFoundError: no such model, or it has no production version (the models or
            versions there are listed).
    """
    from training.registry import ModelRegistry

    registry = ModelRegistry(settings.home)
    if not registry.names():
        raise ConfigError(
            f"The registry {settings.home} holds no model to serve. Train one first "
            f"(`refit train DATA --home {settings.home}`), or pass --home where your models are."
        )
    return registry.get(f"{settings.model}:production")


def refuse_open_exposure(settings: ServeSettings) -> None:
    """Refuse to listen beyond loopback without API keys, unless the settings say ``insecure``.

    Raises:
        ConfigError: a non-loopback host, no key in the keys file, and not ``insecure``.
    """
    from service.keys import read_keys

    loopback = settings.host in ("localhost", "::1") or settings.host.startswith("127.")
    if loopback or settings.insecure or read_keys(settings.api_keys_path):
        return
    raise ConfigError(
        f"Refusing to listen on {settings.host} without API keys: anyone who can reach it could "
        f"send feedback that retrains the model. Create a key (`refit keys create NAME --scope predict "
        f"--home {settings.home}`), or pass --insecure behind a boundary that authenticates."
    )


HomeOption = Annotated[Path | None, typer.Option("--home", help="Registry home (BentoML home).")]
KeysFileOption = Annotated[
    Path | None, typer.Option("--file", help="API keys file; default <home>/refit/api-keys.json.")
]


def _keys_path(home: Path | None, file: Path | None) -> Path:
    from service.settings import load_serve_settings

    overrides: dict[str, object] = {"registry_home": home, "api_keys_file": file}
    return load_serve_settings(overrides=overrides, resolve_model=False).api_keys_path


def create_key(
    name: Annotated[str, typer.Argument(help="Who the key is for (a client, a team).")],
    scope: Annotated[
        list[str], typer.Option("--scope", help="predict, feedback, pin or admin; repeat for several.")
    ],
    rate: Annotated[
        float | None, typer.Option(help="Requests per second at most (default: no limit).")
    ] = None,
    home: HomeOption = None,
    file: KeysFileOption = None,
) -> None:
    """Create an API key and print its token (shown only now; the file keeps its digest)."""
    from service.keys import create_key as add_key

    path = _keys_path(home, file)
    token = add_key(path, name, scope, rate)
    console.print(f"created key {name!r} ({', '.join(scope)}) in {path}; its token, shown only now:")
    console.print(token, soft_wrap=True, highlight=False)


def list_keys(home: HomeOption = None, file: KeysFileOption = None) -> None:
    """List the API keys: name, scopes, rate limit, created (never the tokens)."""
    from rich.table import Table

    from service.keys import read_keys

    path = _keys_path(home, file)
    table = Table("name", "scopes", "rate/s", "created", title=str(path))
    for key in read_keys(path):
        table.add_row(key.name, ", ".join(key.scopes), str(key.rate_per_s or "-"), key.created)
    console.print(table)


def revoke_key(
    name: Annotated[str, typer.Argument()], home: HomeOption = None, file: KeysFileOption = None
) -> None:
    """Revoke an API key: every replica refuses it within a second."""
    from service.keys import revoke_key as remove_key

    remove_key(_keys_path(home, file), name)
    console.print(f"revoked key {name!r}")


def register(app: typer.Typer) -> None:
    """Add the serving commands to the root `refit` app (the ``refit.cli`` entry point)."""
    app.command()(serve)
    keys = typer.Typer(help="Create, list and revoke API keys for the service.", no_args_is_help=True)
    keys.command("create")(create_key)
    keys.command("list")(list_keys)
    keys.command("revoke")(revoke_key)
    app.add_typer(keys, name="keys")
