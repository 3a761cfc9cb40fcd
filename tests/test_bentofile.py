"""The root bentofile.yaml parses as a BentoML build config."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bentofile_is_a_valid_build_config() -> None:
    from bentoml._internal.bento.build_config import BentoBuildConfig

    with open(ROOT / "bentofile.yaml", encoding="utf-8") as stream:
        config = BentoBuildConfig.from_yaml(stream)
    assert config.service == "service.app:RefitClassifier"
    assert any(p.startswith("torch") for p in config.python.packages or [])
    assert {e.name for e in config.envs} >= {"HF_HUB_OFFLINE", "BENTOML_DO_NOT_TRACK"}
