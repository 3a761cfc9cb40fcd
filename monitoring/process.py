"""The monitor and the Evidently UI as child processes on loopback (demo, tests, local runs)."""

from __future__ import annotations

import sys
from pathlib import Path

from service.process import ServiceProcess, free_port, start_process


def start_monitor(env: dict[str, str], log_path: Path, port: int | None = None) -> ServiceProcess:
    """Start `refit monitor` with ``env`` (``REFIT_MONITOR_*``) and its metrics on ``port``.

    Ready once its Prometheus exporter answers (the scheduler has started by then).
    """
    port = port or free_port()
    return start_process(
        [sys.executable, "-m", "monitoring", "monitor", "--port", str(port)],
        env,
        log_path,
        f"http://127.0.0.1:{port}",
        "/metrics",
    )


def start_evidently_ui(workspace: Path, log_path: Path, port: int | None = None) -> ServiceProcess:
    """Start `evidently ui` on ``workspace`` (the monitor's dashboards); ready once it answers."""
    port = port or free_port()
    command = [sys.executable, "-c", "from evidently.cli import app; app()", "ui"]
    command += ["--workspace", str(workspace), "--host", "127.0.0.1", "--port", str(port)]
    return start_process(command, {}, log_path, f"http://127.0.0.1:{port}", "/")
