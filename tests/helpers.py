"""Helpers shared by the test files: tiny labelled data, test limits, CLI and metric readers."""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

# Request limits of the service under test; they are read when service.app is first imported.
SERVICE_LIMITS = {
    "REFIT_SERVE_MAX_TEXTS": "8",
    "REFIT_SERVE_MAX_CHARS": "300",
    "REFIT_SERVE_MAX_BATCH_SIZE": "32",
    "REFIT_SERVE_MAX_LATENCY_MS": "100",
    "REFIT_SERVE_MAX_BODY_BYTES": "20000",
    # One worker per test server (CI has 2 cores); the demo (tests/test_loop.py) serves with the
    # default, one worker per core, through a swap.
    "REFIT_SERVE_WORKERS": "1",
}


def service_env(model: str, home: Any, **extra: str) -> dict[str, str]:
    """``REFIT_SERVE_*`` of a test replica serving ``model`` from the registry at ``home``, with
    the limits of SERVICE_LIMITS; ``extra`` as further REFIT_SERVE_* settings (lower case keys)."""
    env = {**SERVICE_LIMITS, "REFIT_SERVE_MODEL": model, "REFIT_SERVE_REGISTRY_HOME": str(home)}
    return env | {f"REFIT_SERVE_{key.upper()}": value for key, value in extra.items()}


def save_tiny_bert(directory: Path, words: set[str], hidden_size: int = 32, max_tokens: int = 64) -> Path:
    """Save a 2-layer BERT with random weights and a word-level vocabulary, like a hub model.

    A word outside ``words`` is ``[UNK]``, as a word outside a pretrained vocabulary would be split.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_tokens,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# Keyword-separable intents: every strategy, even on a random tiny encoder, can learn them.
TINY_INTENTS = {
    "refund": [
        "refund my payment",
        "money back please",
        "charged twice refund",
        "refund the invoice",
    ],
    "password": [
        "reset my password",
        "forgot password link",
        "password reset email",
        "change password",
    ],
    "shipping": [
        "where is my parcel",
        "parcel delivery late",
        "track my parcel",
        "parcel never arrived",
    ],
}


@contextlib.contextmanager
def serve_registry_copy(
    template: Path, tmp_path: Path, model: str, service_app: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The service over a private copy of the registry at ``template``, in-process, started and
    ready; the client's ``home`` is the copy."""
    from starlette.testclient import TestClient

    home = tmp_path / "bentoml"
    shutil.copytree(template, home)
    for key, value in service_env(model, home, log_flush_ms="20", freeze_heap="false").items():
        monkeypatch.setenv(key, value)
    with TestClient(service_app) as client:
        client.home = home
        yield client


def tiny_rows(copies: int = 3) -> pd.DataFrame:
    """Rows of TINY_INTENTS, each phrase repeated with small variations."""
    rows = []
    for label, phrases in TINY_INTENTS.items():
        for i in range(copies):
            for phrase in phrases:
                rows.append({"text": f"{phrase} {['now', 'today', 'please'][i % 3]}", "label": label})
    return pd.DataFrame(rows)


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    """Run `refit ARGS` as the console script does; (exit code, output with whitespace collapsed)."""
    from training.cli import main
    from training.console import console

    monkeypatch.setenv("COLUMNS", "250")
    # The console was sized when first imported, perhaps before any test set COLUMNS.
    monkeypatch.setattr(console, "width", 250)
    monkeypatch.setattr(sys, "argv", ["refit", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())


def metric_value(metrics_text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def build_service_app(service_class: Any) -> Any:
    """``service_class.to_asgi()`` after unregistering the previous app's BentoML metrics."""
    from prometheus_client import REGISTRY

    for collector in list(REGISTRY._collector_to_names):
        if any(name.startswith("bentoml_") for name in REGISTRY._collector_to_names[collector]):
            REGISTRY.unregister(collector)
    return service_class.to_asgi()


def wait_for_logged_predictions(home: Path, count: int, timeout_s: float = 15.0) -> None:
    """Block until the inference log under ``home`` holds ``count`` predictions (its writer
    thread flushes on its own schedule, later still on a loaded machine)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{home / 'refit' / 'inference.db'}")
    deadline = time.monotonic() + timeout_s
    found = 0
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                found = conn.execute(text("SELECT COUNT(*) FROM predictions")).scalar_one()
            if found >= count:
                return
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"{found} predictions logged after {timeout_s} s; expected {count}")


def mapped_libraries(pid: int) -> set[str]:
    """The file names of the shared libraries process ``pid`` has mapped."""
    import psutil

    return {Path(m.path).name for m in psutil.Process(pid).memory_maps() if ".so" in m.path}


def onnx_workers_and_torch(server_pid: int) -> tuple[list[int], list[int]]:
    """The processes under a `bentoml serve` that run ONNX Runtime, and those of them with libtorch."""
    import psutil

    tree = psutil.Process(server_pid)
    maps = {p.pid: mapped_libraries(p.pid) for p in [tree, *tree.children(recursive=True)]}
    workers = [pid for pid, names in maps.items() if any("onnxruntime" in name for name in names)]
    return workers, [pid for pid in workers if any(name.startswith("libtorch") for name in maps[pid])]
