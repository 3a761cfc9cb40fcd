"""Shared fixtures: a tiny real BERT saved with save_pretrained, tiny labelled data, a registry."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


def tiny_rows(copies: int = 3) -> pd.DataFrame:
    """Rows of TINY_INTENTS, each phrase repeated with small variations."""
    rows = []
    for label, phrases in TINY_INTENTS.items():
        for i in range(copies):
            for phrase in phrases:
                rows.append({"text": f"{phrase} {['now', 'today', 'please'][i % 3]}", "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) with a word-level vocabulary, saved like a hub model."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for phrases in TINY_INTENTS.values() for p in phrases for w in p.split()})
    words += ["now", "today", "please", "hello", "the", "a", "new", "unknown"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


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
    from training.model import quiet_transformers

    quiet_transformers()
