"""Real third-party servers for the tests: PostgreSQL, Prometheus, headless Chromium (Debian packages).

`.ci/run` installs them and sets ``REFIT_REQUIRE_SERVICES=1``, which turns a missing program into a
failure; elsewhere the tests that need one are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from demo.processes import free_port

REQUIRED = os.environ.get("REFIT_REQUIRE_SERVICES") == "1"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def need(program: str, *patterns: str) -> str:
    """The path of ``program`` (on PATH or matching a glob), or skip (fail under REFIT_REQUIRE_SERVICES)."""
    found = shutil.which(program) or next(iter(sorted(p for g in patterns for p in glob.glob(g))), None)
    if found:
        return found
    message = f"{program} is not installed (Debian package; .ci/run installs it)"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a loopback port; yields its SQLAlchemy URL (database ``refit``).

    PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres`` user.
    """
    initdb = need("initdb", "/usr/lib/postgresql/*/bin/initdb")
    bindir = Path(initdb).resolve().parent
    root = Path(tempfile.mkdtemp(prefix="refit-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    run = lambda *args: subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "refit", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "refit", "refit")
        yield f"postgresql+psycopg://refit@127.0.0.1:{port}/refit"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], check=False)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def prometheus_server(targets: dict[str, str], rules: Path, root: Path) -> Iterator[str]:
    """Prometheus scraping ``targets`` (job -> host:port) every second with ``rules``; yields its URL."""
    binary = need("prometheus")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(rules, root / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        binary,
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (root / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/-/ready", process, root / "prometheus.log")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Block until ``url`` answers 200; fail with the log's end if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    pytest.fail(f"{url} not ready in {timeout:.0f} s")


def chromium(url: str, *args: str, budget_ms: int = 15000) -> str:
    """Load ``url`` in headless Chromium, let it run ``budget_ms`` of virtual time; its stdout."""
    binary = need("chromium", "/usr/bin/chromium")
    profile = tempfile.mkdtemp(prefix="refit-chromium-")
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
    try:
        completed = subprocess.run([*command, *args, url], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout
