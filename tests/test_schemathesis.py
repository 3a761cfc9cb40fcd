"""Schemathesis against a real `bentoml serve` with API keys: no server error, no schema violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.processes import start_service
from service.keys import create_key
from tests.helpers import SERVICE_LIMITS

pytestmark = pytest.mark.slow  # a real server and a few hundred generated requests


@pytest.fixture(scope="module")
def keyed_server(
    served_home_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The tiny served registry behind a real server that has an admin key."""
    root = tmp_path_factory.mktemp("schemathesis")
    home = root / "bentoml"
    shutil.copytree(served_home_template, home)
    token = create_key(home / "refit" / "api-keys.json", "fuzzer", ["admin"])
    env = {
        **SERVICE_LIMITS,
        "BENTOML_HOME": str(home),
        "REFIT_SERVE_MODEL": "tiny",
        "REFIT_SERVE_REGISTRY_HOME": str(home),
        "REFIT_SERVE_THREADS": "1",
    }
    service = start_service(env, root / "server.log")
    try:
        service.wait_ready()
        yield {"url": service.url, "token": token, "log": service.log_path}
    finally:
        service.stop()


def test_generated_requests_get_no_server_error_and_match_the_schema(
    keyed_server: dict[str, Any], tmp_path: Path
) -> None:
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
        "run", f"{keyed_server['url']}/docs.json",
        "--checks", "all", "--max-examples", "20", "--seed", "1", "--workers", "1",
        "--header", f"Authorization: Bearer {keyed_server['token']}", "--request-timeout", "30",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
