"""The root bentofile.yaml parses as a BentoML build config."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bentofile_is_a_valid_build_config() -> None:
    from bentoml._internal.bento.build_config import BentoBuildConfig

    with open(ROOT / "bentofile.yaml", encoding="utf-8") as stream:
        config = BentoBuildConfig.from_yaml(stream)
    assert config.service == "service.app:RefitClassifier"
    assert any(p.startswith("torch") for p in config.python.packages or [])
    envs = {e.name: e.value for e in config.envs}
    assert envs.keys() >= {"HF_HUB_OFFLINE", "BENTOML_DO_NOT_TRACK"}
    assert envs["BENTOML_DO_NOT_TRACK"] == "true"  # BentoML tracks usage under "1"


def test_bentofile_packages_are_the_project_dependencies() -> None:
    """The image runs the source without installing the project: it needs every dependency."""
    import tomllib

    import yaml

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    assert sorted(bento) == sorted(declared)


@pytest.mark.slow  # `bentoml build` in a child process
def test_bentoml_build_produces_a_bento(tmp_path: Path) -> None:
    """`bentoml build` on the project makes a Bento with the service, the source and a Dockerfile."""
    import os
    import subprocess
    import sys

    import yaml

    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "bentoml", "build", str(ROOT), "--output", "tag"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    [bento] = list((tmp_path / "bentos" / "refit").glob("*/bento.yaml"))
    manifest = yaml.safe_load(bento.read_text())
    assert manifest["service"] == "service.app:RefitClassifier"
    assert manifest["name"] == "refit"
    source = bento.parent / "src"
    for module in ("service/app.py", "monitoring/__main__.py", "training/registry.py"):
        assert (source / module).is_file(), module
    assert not (source / ".venv").exists() and not (source / "tests").exists()
    assert not (source / "demo").exists()  # the demo drives the system; the image serves it
    assert (bento.parent / "env" / "docker" / "Dockerfile").is_file()
    requirements = (bento.parent / "env" / "python" / "requirements.txt").read_text()
    assert "bentoml>=1.4.37,<1.5" in requirements and "psycopg[binary]" in requirements
