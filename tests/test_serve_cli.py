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
from tests.helpers import SERVICE_LIMITS, onnx_workers_and_torch

pytestmark = pytest.mark.slow  # a real `refit serve` process


def start_refit_serve(home: Path, port: int, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    """`refit serve` of the tiny model, through the installed console script."""
    # "1" is what most tools take for "do not track"; BentoML tracks unless it reads "true". A long
    # queue deadline: a busy CI machine may shed a request as overloaded, which is not measured here.
    env = {
        **os.environ,
        **SERVICE_LIMITS,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "1",
        "REFIT_SERVE_MAX_LATENCY_MS": "10000",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    refit = str(Path(sys.executable).parent / "refit")
    command = [refit, "serve", "--model", "tiny", "--home", str(home), "--port", str(port), *flags]
    with log.open("wb") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)


def wait_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, verify: bool | str = True, timeout: float = 180.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready; log: {log.read_text(errors='replace')[-2000:]}")


def test_sigterm_stops_every_process_and_loses_no_answered_prediction(
    served_home: Path, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    process = start_refit_serve(served_home, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        server = psutil.Process(process.pid)
        assert server.cmdline()[1:4] == ["-m", "bentoml", "serve"]  # `refit serve` became the server
        assert server.environ()["BENTOML_DO_NOT_TRACK"] == "true"  # BentoML's usage tracking off
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


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_refit_serve_speaks_tls_with_a_certificate(served_home: Path, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    port, log = free_port(), tmp_path / "serve.log"
    process = start_refit_serve(
        served_home, port, log, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)
    )
    try:
        wait_ready(f"https://127.0.0.1:{port}", process, log, verify=str(cert))
        answer = httpx.post(
            f"https://127.0.0.1:{port}/classify", json={"texts": ["reset my password"]}, verify=str(cert)
        )
        assert answer.status_code == 200 and answer.json()[0]["label"] == "password"
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served beside it
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_refit_serve_refuses_half_a_tls_configuration(tmp_path: Path) -> None:
    cert, _ = self_signed_certificate(tmp_path)
    refit = str(Path(sys.executable).parent / "refit")
    completed = subprocess.run(
        [refit, "serve", "--ssl-certfile", str(cert), "--home", str(tmp_path)], capture_output=True, text=True
    )
    assert completed.returncode == 2
    assert "TLS needs both ssl_certfile and ssl_keyfile; found only ssl_certfile" in " ".join(
        completed.stdout.split()
    )


def test_refit_serve_refuses_to_start_with_nothing_to_serve(served_home: Path, tmp_path: Path) -> None:
    # Started anyway, every worker would fail its start-up and be restarted, a traceback each,
    # behind a line announcing what it serves.
    refit = str(Path(sys.executable).parent / "refit")
    for flags, expected in [
        (
            ["--home", str(tmp_path / "empty")],
            "holds no model to serve. Train one first (`refit train DATA --home",
        ),
        (["--home", str(served_home), "--model", "nope"], "No model named 'nope' in"),
    ]:
        completed = subprocess.run([refit, "serve", *flags], capture_output=True, text=True, timeout=120)
        output = " ".join((completed.stdout + completed.stderr).split())
        assert completed.returncode == 2, output
        assert expected in output and "Serving" not in output, output


def test_refit_serve_refuses_a_port_in_use(served_home: Path) -> None:
    # Grafana, another Refit server, a forgotten demo: port 3000 is often taken.
    refit = str(Path(sys.executable).parent / "refit")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = [refit, "serve", "--home", str(served_home), "--port", str(port)]
        completed = subprocess.run(args, capture_output=True, text=True, timeout=120)
    output = " ".join((completed.stdout + completed.stderr).split())
    assert completed.returncode == 2, output
    assert f"Cannot listen on 127.0.0.1:{port}: another process listens there" in output
    assert "Serving" not in output and "Traceback" not in output


def test_refit_serve_exports_the_production_version_before_its_workers_start(
    served_home: Path, tmp_path: Path
) -> None:
    import shutil

    from training.registry import ModelRegistry

    production = ModelRegistry(served_home).get("tiny:production")
    shutil.rmtree(production.path / "onnx")  # trained without --export-onnx
    port, log = free_port(), tmp_path / "serve.log"
    process = start_refit_serve(served_home, port, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log)
        assert f"made the ONNX export of {production.tag}: onnx/model.onnx" in log.read_text()
        # A worker that exported would carry torch for its life.
        workers, with_torch = onnx_workers_and_torch(process.pid)
        assert workers and not with_torch, (workers, with_torch)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
