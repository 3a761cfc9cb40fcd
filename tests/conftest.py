"""Shared fixtures: a tiny real BERT saved with save_pretrained, tiny labelled data, a registry."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    SERVICE_LIMITS,
    TINY_INTENTS,
    build_service_app,
    save_tiny_bert,
    service_env,
    tiny_rows,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# BentoML serves /metrics from prometheus_client's multiprocess files, in-process apps included.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="refit-prometheus-"))


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) with a word-level vocabulary, saved like a hub model."""
    words = {w for phrases in TINY_INTENTS.values() for p in phrases for w in p.split()}
    words |= {"now", "today", "please", "hello", "the", "a", "new", "unknown"}
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), words)


@pytest.fixture(scope="session")
def tiny_vision_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer ViT (32 px images, 8 px patches, hidden 32), saved like a hub model."""
    import json

    import torch
    from transformers import ViTConfig, ViTModel

    directory = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    ViTModel(config).save_pretrained(directory)
    processor = {"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    (directory / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def tiny_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-stage ResNet with BatchNorm (32 px images, 16 channels), saved like a hub model."""
    import json

    import torch
    from transformers import ResNetConfig, ResNetModel

    directory = tmp_path_factory.mktemp("tiny-resnet")
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(directory)
    processor = {"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    (directory / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def surfaces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of class folders: 10 generated 40 px surfaces per label (free, scratch, spot, crack)."""
    from demo.surfaces import write_surfaces

    return write_surfaces(tmp_path_factory.mktemp("surfaces") / "images", per_class=10, size=40)


@pytest.fixture(scope="session")
def image_home_template(
    tmp_path_factory: pytest.TempPathFactory, surfaces: Path, tiny_vision_model: Path
) -> Path:
    """A registry with one image version (`surfaces`, head on the tiny ViT), exported to ONNX."""
    from training.config import TrainingConfig
    from training.onnx_export import export_version
    from training.pipeline import train_model
    from training.registry import ModelRegistry

    home = tmp_path_factory.mktemp("image-served") / "bentoml"
    config = TrainingConfig(
        name="surfaces",
        base_model=str(tiny_vision_model),
        strategy="head",
        profile_rows=20,
        normal_label="free",
    )
    version = train_model(surfaces, config, registry=ModelRegistry(home)).version
    assert version is not None
    export_version(version)
    return home


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    """A CSV of tiny, keyword-separable support intents."""
    path = tmp_path / "tiny.csv"
    tiny_rows().to_csv(path, index=False)
    return path


@pytest.fixture
def make_config(tiny_base_model: Path) -> Callable[..., Any]:
    """Build a TrainingConfig on the tiny BERT with fast settings; keywords override."""
    from training.config import TrainingConfig

    def build(**overrides: Any) -> TrainingConfig:
        values: dict[str, Any] = {
            "name": "tiny",
            "base_model": str(tiny_base_model),
            "strategy": "head",
            "max_length": 16,
            "batch_size": 8,
            "epochs": 15,
            "early_stopping_patience": 15,
            "learning_rate": 5e-3,
            "label_smoothing": 0.0,
            "profile_rows": 20,
            "validation_fraction": 0.2,
            "test_fraction": 0.25,
        }
        values.update(overrides)
        return TrainingConfig(**values)

    return build


@pytest.fixture
def registry(tmp_path: Path) -> Any:
    """An empty registry in a temporary BentoML home."""
    from training.registry import ModelRegistry

    return ModelRegistry(tmp_path / "bentoml")


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers() -> None:
    from training.console import quiet_transformers

    quiet_transformers()


@pytest.fixture(scope="session")
def served_home_template(tmp_path_factory: pytest.TempPathFactory, tiny_base_model: Path) -> Path:
    """A registry with `tiny` v1 (head, production) and v2 (baseline, candidate), both exported to ONNX."""
    from training.config import TrainingConfig
    from training.onnx_export import export_version
    from training.pipeline import train_model
    from training.registry import ModelRegistry

    root = tmp_path_factory.mktemp("served")
    data = root / "tiny.csv"
    tiny_rows().to_csv(data, index=False)
    registry = ModelRegistry(root / "bentoml")
    common = {"name": "tiny", "base_model": str(tiny_base_model), "max_length": 16, "profile_rows": 20}
    for strategy in ("head", "baseline"):
        version = train_model(data, TrainingConfig(strategy=strategy, **common), registry=registry).version
        assert version is not None
        export_version(version)
    return root / "bentoml"


@pytest.fixture
def served_home(served_home_template: Path, tmp_path: Path) -> Path:
    """A private copy of the served registry, so a test may promote, corrupt or delete."""
    home = tmp_path / "bentoml"
    shutil.copytree(served_home_template, home)
    return home


@pytest.fixture
def serve_env(served_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for a service replica over ``served_home`` (limits as in SERVICE_LIMITS)."""
    env = service_env("tiny", served_home, swap_poll_s="0.2", log_flush_ms="20")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="session")
def service_class() -> Any:
    """The BentoML service class, imported once: the limits of SERVICE_LIMITS are fixed then."""
    saved = {k: os.environ.get(k) for k in SERVICE_LIMITS}
    os.environ.update(SERVICE_LIMITS)
    try:
        from service.app import RefitClassifier
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return RefitClassifier


@pytest.fixture
def service_app(service_class: Any) -> Any:
    """A fresh ASGI app of the service; its instance is built from the environment when it starts.

    BentoML registers its HTTP metrics in prometheus_client's default registry each time an app
    is built (a real server builds one per process), so the previous app's are unregistered.
    """
    return build_service_app(service_class)


@pytest.fixture
def client(service_app: Any, serve_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The service in-process (``to_asgi()``), started and ready."""
    from starlette.testclient import TestClient

    # Freezing the heap is a worker-process policy: here it would walk pytest's whole heap at
    # every start (+10 s for this file). Real test servers keep the default.
    monkeypatch.setenv("REFIT_SERVE_FREEZE_HEAP", "false")

    with TestClient(service_app) as test_client:
        yield test_client
