"""`refit demo` stopped from outside: what it started stops with it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow  # trains the image demo's v1 and starts its three processes


def test_sigterm_stops_the_demo_and_the_processes_it_started(tmp_path: Path) -> None:
    refit = str(Path(sys.executable).with_name("refit"))
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "demo" / "bentoml"), "COLUMNS": "140"}
    with (tmp_path / "demo.log").open("w") as log:
        demo = subprocess.Popen(
            [refit, "demo", "--images", "--out", "demo"], cwd=tmp_path, env=env, stdout=log, stderr=log
        )
    everything: list[psutil.Process] = []
    try:
        # The service, the monitor and the Evidently UI, each started once the one before is ready.
        deadline = time.monotonic() + 240
        started: list[psutil.Process] = []
        while len(started) < 3 and time.monotonic() < deadline and demo.poll() is None:
            time.sleep(0.5)
            started = psutil.Process(demo.pid).children()
        output = (tmp_path / "demo.log").read_text(errors="replace")
        assert len(started) == 3, output[-3000:]
        everything = [p for child in started for p in [child, *child.children(recursive=True)]]
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) != 0  # the loop did not close
        _, alive = psutil.wait_procs(everything, timeout=30)
        assert not alive, [p.cmdline()[:4] for p in alive]
        assert "stopped 3 processes" in (tmp_path / "demo.log").read_text(errors="replace")
    finally:
        if demo.poll() is None:
            demo.kill()
        for process in everything:  # what a failed stop left behind
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
