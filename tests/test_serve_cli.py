"""`refit serve` becomes the server: a SIGTERM drains it, flushes the inference log, leaves nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from demo.processes import free_port
from demo.traffic import Traffic, send_traffic
from tests.helpers import SERVICE_LIMITS

pytestmark = pytest.mark.slow  # a real `refit serve` process


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready; log: {log.read_text(errors='replace')[-2000:]}")


def test_sigterm_stops_every_process_and_loses_no_answered_prediction(
    served_home: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, **SERVICE_LIMITS, "BENTOML_HOME": str(served_home)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    refit = str(Path(sys.executable).parent / "refit")
    command = [refit, "serve", "--model", "tiny", "--home", str(served_home), "--port", str(port)]
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        server = psutil.Process(process.pid)
        assert server.cmdline()[1:4] == ["-m", "bentoml", "serve"]  # `refit serve` became the server
        children = server.children(recursive=True)
        texts = Traffic(["reset my password", "track my parcel"])
        stats = send_traffic(url, texts, concurrency=4, repeat=True, until=lambda s: s.sent >= 60)
        assert stats.failed == 0, stats.failures[:3]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) is not None
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [p.cmdline() for p in alive]  # no worker orphaned on the port
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if process.poll() is None:
            process.kill()
    with sqlite3.connect(served_home / "refit" / "inference.db") as db:
        logged = db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    assert logged == stats.requests  # the queue was flushed on the way out
