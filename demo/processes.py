"""Child processes on loopback for the demo, the benchmarks and the tests: the service, the monitor, the UI.

``start_process`` is the general form; each is ready once an HTTP path of it answers 200.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from service.cli import serve_command
from training.usage_tracking import turn_off_usage_tracking

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10_000
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now and that this process has not handed out.

    On Linux the port comes from below the kernel's ephemeral range: a server told to listen on
    it binds later, and in between the kernel must not give the same port to someone asking for
    any free one (BentoML reserves its control sockets that way, and a collision stops it with
    "Address already in use"). Parallel test workers (pytest-xdist) each draw from their own share
    of the range, since one worker cannot see which ports another has handed out but not yet bound.
    """
    if _EPHEMERAL_RANGE.exists():
        ephemeral_low = int(_EPHEMERAL_RANGE.read_text().split()[0])
        share, shares = _worker_share()
        candidates = [p for p in range(_LOWEST_PORT, ephemeral_low) if p % shares == share]
        random.shuffle(candidates)
        for port in candidates:
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    _handed_out.add(port)
    return port


def _worker_share() -> tuple[int, int]:
    """(this worker's index, the number of workers) under pytest-xdist; (0, 1) otherwise."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 0:
        return int(worker[2:]) % int(count), int(count)
    return 0, 1


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class LoopbackProcess:
    """A child process answering HTTP on loopback: its URL, process, log file and readiness path."""

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
) -> LoopbackProcess:
    """Start ``command`` in the project root with ``env`` added to this process's environment.

    Output goes to ``log_path``; the process is not ready yet (``wait_ready``).
    """
    full_env = {**os.environ, **env}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml serve sets up its own
    turn_off_usage_tracking(full_env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(command, cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    return LoopbackProcess(url=url, process=process, log_path=log_path, _log=log, ready_path=ready_path)


def start_service(
    env: dict[str, str], log_path: Path, host: str = "127.0.0.1", port: int | None = None
) -> LoopbackProcess:
    """Start `bentoml serve` with ``env`` added to this process's environment (not yet ready)."""
    port = port or free_port()
    return start_process(serve_command(host, port), env, log_path, f"http://{host}:{port}", "/readyz")


def start_monitor(env: dict[str, str], log_path: Path, port: int | None = None) -> LoopbackProcess:
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


def start_evidently_ui(workspace: Path, log_path: Path, port: int | None = None) -> LoopbackProcess:
    """Start `evidently ui` on ``workspace`` (the monitor's dashboards); ready once it answers."""
    port = port or free_port()
    command = [sys.executable, "-c", "from evidently.cli import app; app()", "ui"]
    command += ["--workspace", str(workspace), "--host", "127.0.0.1", "--port", str(port)]
    return start_process(command, {}, log_path, f"http://127.0.0.1:{port}", "/")
