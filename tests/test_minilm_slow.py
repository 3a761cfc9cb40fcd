"""Slow tests with the real, bundled all-MiniLM-L6-v2 on the generated demo data."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.data import write_demo_data
from training.config import TrainingConfig
from training.onnx_export import export_version
from training.pipeline import train_model
from training.registry import ModelRegistry


@pytest.mark.slow
def test_minilm_ladder_on_demo_data_beats_the_base_model_and_exports(tmp_path: Path) -> None:
    paths = write_demo_data(tmp_path / "data", rows=1000)
    config = TrainingConfig(
        name="demo",
        strategy="auto",
        auto_ladder=["baseline", "head"],
        auto_target_macro_f1=1.0,
        profile_rows=200,
    )
    registry = ModelRegistry(tmp_path / "bentoml")
    outcome = train_model(paths["train"], config, registry=registry)
    baseline, head = outcome.ladder
    print(outcome.ladder)
    assert head["test_macro_f1"] > baseline["test_macro_f1"]
    assert outcome.test.accuracy > 0.9
    assert outcome.version.manifest["base_model"] == "minilm"
    record = export_version(outcome.version)
    assert record["parity_max_abs_diff"] <= 1e-4
    assert record["accuracy"] == pytest.approx(outcome.test.accuracy, abs=0.005)
