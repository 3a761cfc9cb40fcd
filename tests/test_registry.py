"""Registry tests: a trained version describes itself, loads by tag and stage, changes stage atomically."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.helpers import TINY_INTENTS
from training.artifacts import (
    load_version_model,
    load_version_profile,
    read_labels,
    read_metrics,
    read_split,
)
from training.errors import RegistryError, VersionNotFoundError
from training.inference import predict
from training.pipeline import train_model
from training.registry import ModelRegistry


@pytest.fixture
def two_versions(tiny_csv: Path, make_config: Callable[..., Any], registry: ModelRegistry) -> tuple[Any, Any]:
    first = train_model(tiny_csv, make_config(strategy="head"), registry=registry).version
    second = train_model(tiny_csv, make_config(strategy="baseline"), registry=registry).version
    return first, second


def test_a_version_holds_everything_needed(two_versions: tuple[Any, Any]) -> None:
    first, _ = two_versions
    for name in (
        "model/model.safetensors",
        "model/config.json",
        "model/tokenizer.json",
        "labels.json",
        "training_config.json",
        "metrics.json",
        "report.md",
        "report.html",
        "reference_profile.parquet",
        "data/train.parquet",
        "data/test.parquet",
        "refit.json",
    ):
        assert (first.path / name).is_file(), name
    manifest = first.manifest
    assert manifest["strategy"] == "head"
    assert manifest["data_fingerprint"].startswith("sha256:")
    assert manifest["parent_version"] is None and manifest["created"]
    assert read_labels(first) == ["password", "refund", "shipping"]
    metrics = read_metrics(first)
    assert set(metrics["test"]) >= {"accuracy", "macro_f1", "ece", "per_class", "confusion"}
    assert "<table" in (first.path / "report.html").read_text()


def test_reference_profile_holds_embeddings_and_probabilities(
    two_versions: tuple[Any, Any],
) -> None:
    first, _ = two_versions
    profile = load_version_profile(first)
    assert len(profile) == 20  # profile_rows caps the sample (training rows: under 30 held out)
    assert len(profile["embedding"].iloc[0]) == 32
    probs = np.stack(profile["probabilities"].to_numpy())
    assert probs.shape == (20, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert set(profile["predicted_label"]) <= {"password", "refund", "shipping"}


def test_the_profile_holds_only_rows_the_shipped_model_never_trained_on(
    tmp_path: Path, make_config: Callable[..., Any], registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    # The head is refitted on train + validation once C is chosen: its validation rows are then
    # training rows, and a profile holding them makes the monitor's baseline too confident.
    rows = [
        {"text": f"{phrase} number {i}", "label": label}
        for label, phrases in TINY_INTENTS.items()
        for phrase in phrases
        for i in range(12)
    ]
    data = tmp_path / "unique.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    refitted = train_model(data, make_config(profile_rows=500), registry=registry).version
    kept = train_model(data, make_config(profile_rows=500, refit_head=False), registry=registry).version

    def texts(version: Any, *splits: str) -> set[str]:
        return {text for split in splits for text in read_split(version, split)["text"]}

    assert len(texts(refitted, "test")) >= 30  # enough for a profile of test rows alone
    assert set(load_version_profile(refitted)["text"]) == texts(refitted, "test")
    assert set(load_version_profile(kept)["text"]) == texts(kept, "validation", "test")
    # Too few test rows for a profile of their own: validation + test, and the log says why.
    few = train_model(data, make_config(profile_rows=500, test_fraction=0.1), registry=registry).version
    assert len(texts(few, "test")) < 30
    assert set(load_version_profile(few)["text"]) == texts(few, "validation", "test")
    assert "also holds the validation rows the head was refitted on" in caplog.text


def test_first_version_is_production_and_the_next_a_candidate(
    two_versions: tuple[Any, Any],
) -> None:
    first, second = two_versions
    assert (first.stage, second.stage) == ("production", "candidate")
    assert second.manifest["parent_version"] == first.version


def test_load_by_tag_and_by_stage_round_trip(
    tiny_csv: Path, make_config: Callable[..., Any], registry: ModelRegistry
) -> None:
    outcome = train_model(tiny_csv, make_config(strategy="full", epochs=3), registry=registry)
    texts = list(read_split(outcome.version, "test")["text"])
    by_tag, processor = load_version_model(registry.get(outcome.version.tag))
    by_stage, _ = load_version_model(registry.get("tiny:production"))
    bare, _ = load_version_model(registry.get("tiny"))
    logits = [predict(m, processor, texts).logits for m in (by_tag, by_stage, bare)]
    assert np.array_equal(logits[0], logits[1]) and np.array_equal(logits[0], logits[2])
    accuracy = (
        logits[0].argmax(axis=1)
        == [read_labels(outcome.version).index(x) for x in read_split(outcome.version, "test")["label"]]
    ).mean()
    assert accuracy == pytest.approx(outcome.test.accuracy)


def test_promote_and_rollback(two_versions: tuple[Any, Any], registry: ModelRegistry) -> None:
    first, second = two_versions
    registry.promote(second.tag)
    assert registry.get("tiny:production").version == second.version
    assert registry.get(first.tag).stage == "archived"
    restored = registry.rollback("tiny")
    assert restored.version == first.version and restored.stage == "production"
    assert registry.get(second.tag).stage == "archived"
    with pytest.raises(RegistryError, match=r"Cannot roll back 'tiny': no earlier production version"):
        registry.rollback("tiny")
    actions = [e.action for e in registry.read_stages("tiny").events]
    assert actions == ["promote", "promote", "rollback"]


def test_promote_rollback_promote_keeps_a_consistent_stack(
    two_versions: tuple[Any, Any], registry: ModelRegistry
) -> None:
    first, second = two_versions
    registry.promote(second.tag)
    registry.rollback("tiny")
    registry.promote(second.tag)
    assert registry.rollback("tiny").version == first.version


def test_deleting_production_is_refused_and_others_are_deleted(
    two_versions: tuple[Any, Any], registry: ModelRegistry
) -> None:
    first, second = two_versions
    with pytest.raises(RegistryError, match=r"Refusing to delete tiny:.*it is the production version"):
        registry.delete(first.tag)
    assert first.path.is_dir()
    registry.delete(second.tag)
    assert [v.version for v in registry.versions("tiny")] == [first.version]


def test_unknown_references_say_what_exists(two_versions: tuple[Any, Any], registry: ModelRegistry) -> None:
    with pytest.raises(VersionNotFoundError, match=r"No model named 'nope'.*Models: tiny"):
        registry.get("nope")
    with pytest.raises(VersionNotFoundError, match=r"has no version 'zzz'"):
        registry.get("tiny:zzz")
    _, second = two_versions
    registry.delete(second.tag)
    with pytest.raises(VersionNotFoundError, match=r"has no candidate version.*refit models promote"):
        registry.get("tiny:candidate")


def test_stage_file_is_replaced_atomically(two_versions: tuple[Any, Any], registry: ModelRegistry) -> None:
    _, second = two_versions
    registry.promote(second.tag)
    stage_dir = registry.home / "refit" / "stages"
    assert sorted(p.name for p in stage_dir.iterdir()) == ["tiny.json", "tiny.lock"]


SAVE_A_VERSION = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from training.registry import ModelRegistry
ModelRegistry(sys.argv[1]).register("m", {"strategy": "head"}, lambda path: {})
"""


@pytest.mark.parametrize(("value", "tracked"), [(None, False), ("1", False), ("false", True)])
def test_saving_a_version_sends_bentoml_no_usage_event_unless_the_user_opted_in(
    tmp_path: Path, value: str | None, tracked: bool
) -> None:
    # BentoML's debugging switch logs each usage event's payload instead of posting it.
    env = {**os.environ, "__BENTOML_DEBUG_USAGE": "true"}
    env.pop("BENTOML_DO_NOT_TRACK", None)
    env |= {"BENTOML_DO_NOT_TRACK": value} if value is not None else {}
    command = [sys.executable, "-c", SAVE_A_VERSION, str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("Tracking Payload" in done.stderr) is tracked, done.stderr[-2000:]
