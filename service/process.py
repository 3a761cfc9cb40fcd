"""Child processes on loopback: `bentoml serve` for the Refit service (CLI, demo, benchmarks, checks).

``start_process`` is the general form: the monitor and the Evidently UI are started the same way.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

SERVICE_IMPORT = "service.app:RefitClassifier"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(host: str, port: int) -> list[str]:
    """The `bentoml serve` command line for the Refit service."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE_IMPORT, "--host", host, "--port", str(port)]


@dataclass
class ServiceProcess:
    """A running child process that answers HTTP: its URL, process, log file and readiness path."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]
    ready_path: str = "/readyz"

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Block until ``ready_path`` answers 200.

        Raises:
            RuntimeError: the process exited (the end of its log is in the message).
            TimeoutError: not ready in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.process.args!r} exited with {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.url} was not ready within {timeout:.0f} s; log: {self.log_path}")

    def worker_rss_mb(self) -> float:
        """Resident memory of the largest process of the service (its model worker), in MiB."""
        import psutil

        parent = psutil.Process(self.process.pid)
        processes = [parent, *parent.children(recursive=True)]
        return max(p.memory_info().rss for p in processes) / 2**20

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the server (graceful first) and close its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_process(
    command: list[str], env: dict[str, str], log_path: Path, url: str, ready_path: str
) -> ServiceProcess:
    """Start ``command`` in the project root with ``env`` added to this process's environment.

    Output goes to ``log_path``; the process is not ready yet (``wait_ready``).
    """
    full_env = {**os.environ, **env}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml serve sets up its own
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(command, cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    return ServiceProcess(url=url, process=process, log_path=log_path, _log=log, ready_path=ready_path)


def start_service(
    env: dict[str, str], log_path: Path, host: str = "127.0.0.1", port: int | None = None
) -> ServiceProcess:
    """Start `bentoml serve` with ``env`` added to this process's environment (not yet ready)."""
    port = port or free_port()
    return start_process(serve_command(host, port), env, log_path, f"http://{host}:{port}", "/readyz")
