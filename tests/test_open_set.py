"""Open-set answers: the threshold rule, what a version ships, and abstaining through the service."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.helpers import tiny_rows
from training.open_set import (
    MIN_LABEL_ROWS,
    OPEN_SET_FILE,
    choose_threshold,
    load_open_set,
    sample_open_set_rows,
)
from training.pipeline import train_model
from training.registry import ModelRegistry


@pytest.mark.parametrize(
    ("scores", "correct", "max_loss", "threshold"),
    [
        # Abstaining on wrong answers is free; the first right one costs 1/4 > 0.2.
        ([0.9, 0.8, 0.7, 0.1], [False, False, True, True], 0.2, 0.8),
        ([0.9, 0.8, 0.7, 0.1], [False, False, True, True], 0.25, 0.7),
        ([0.9, 0.8, 0.7, 0.1], [True, True, True, True], 0.0, float("inf")),
        # Tied scores are never split: the cut moves above the tie.
        ([0.9, 0.5, 0.5, 0.1], [False, False, True, True], 0.0, 0.9),
        ([0.9, 0.5, 0.5, 0.1], [False, True, False, True], 0.25, 0.5),
    ],
)
def test_the_threshold_costs_at_most_the_allowed_accuracy(
    scores: list[float], correct: list[bool], max_loss: float, threshold: float
) -> None:
    assert choose_threshold(np.array(scores), np.array(correct), max_loss) == threshold


def test_a_trained_version_ships_its_open_set_calibration(
    tiny_csv: Path, make_config: Callable[..., Any], registry: ModelRegistry
) -> None:
    version = train_model(tiny_csv, make_config(strategy="head"), registry=registry).version
    assert version is not None
    loaded = load_open_set(version.path)
    assert loaded is not None
    open_set, reference = loaded
    assert reference.shape == (version.manifest["rows"]["train"], 32)
    assert open_set.validation_rows == version.manifest["rows"]["validation"]
    assert open_set.max_accuracy_loss == 0.02
    assert version.manifest["open_set"]["threshold"] == open_set.threshold


def test_a_reference_past_the_cap_keeps_each_label_s_share_and_every_rare_label() -> None:
    labels = np.array([0] * 900 + [1] * 95 + [2] * 5)
    kept = sample_open_set_rows(labels, 200, seed=0)
    assert list(kept) == sorted(set(kept))
    assert list(np.bincount(labels[kept])) == [180, 19, 5]  # label 2: all 5, fewer than MIN_LABEL_ROWS
    assert list(sample_open_set_rows(labels, 200, seed=0)) == list(kept)  # the run's seed decides
    assert list(sample_open_set_rows(labels, 200, seed=1)) != list(kept)
    assert list(sample_open_set_rows(labels, 1000, seed=0)) == list(range(1000))  # at the cap: all


@pytest.mark.parametrize("selection", ["holdout", "cv"])
def test_a_version_trained_past_the_cap_serves_the_sample_its_threshold_was_chosen_on(
    make_config: Callable[..., Any], registry: ModelRegistry, tmp_path: Path, selection: str
) -> None:
    from monitoring.reference import Encoder
    from training.artifacts import load_version_processor, read_split
    from training.novelty import nearest_distance

    data = tmp_path / "tickets.csv"
    tiny_rows(copies=12).to_csv(data, index=False)
    config = make_config(strategy="head", open_set_reference_rows=10, selection=selection)
    version = train_model(data, config, registry=registry).version
    assert version is not None
    loaded = load_open_set(version.path)
    assert loaded is not None
    open_set, reference = loaded
    train_rows = version.manifest["rows"]["train"]
    assert len(reference) == open_set.reference_rows == 3 * MIN_LABEL_ROWS < train_rows
    if selection == "holdout":
        # The distances the threshold was chosen on are the validation rows' to the served sample.
        validation = read_split(version, "validation")
        _, embeddings = Encoder(version, load_version_processor(version)).outputs(list(validation["text"]))
        distances = nearest_distance(embeddings, reference, unit_reference=True)
        assert open_set.distance_mean == pytest.approx(float(distances.mean()), abs=1e-3)


def test_leave_one_out_distances_to_a_sample_skip_only_the_row_itself_or_its_group() -> None:
    from training.novelty import nearest_distance

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(30, 4))
    groups = np.repeat(np.arange(10), 3)
    sample = np.array([1, 4, 5, 11, 20, 29])
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cosine = 1.0 - unit @ unit[sample].T
    alone = nearest_distance(rows, rows[sample], exclude_self=True, reference_rows=sample)
    grouped = nearest_distance(rows, rows[sample], exclude_self=True, groups=groups, reference_rows=sample)
    for i in range(30):
        not_itself = [c for c, j in zip(cosine[i], sample, strict=True) if j != i]
        other_groups = [c for c, j in zip(cosine[i], sample, strict=True) if groups[j] != groups[i]]
        assert alone[i] == pytest.approx(min(not_itself), abs=1e-5)
        assert grouped[i] == pytest.approx(min(other_groups), abs=1e-5)


def set_threshold(home: Path, threshold: float) -> None:
    for path in (home / "models" / "tiny").glob(f"*/{OPEN_SET_FILE}"):
        values = json.loads(path.read_text())
        path.write_text(json.dumps({**values, "threshold": threshold}))


@pytest.mark.parametrize("abstain", [True, False])
def test_out_of_scope_texts_get_label_null_and_a_best_guess_when_abstaining(
    service_app: Any,
    serve_env: dict[str, str],
    served_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    abstain: bool,
) -> None:
    from starlette.testclient import TestClient

    set_threshold(served_home, -1e9)  # every text scores over it
    monkeypatch.setenv("REFIT_SERVE_ABSTAIN", str(abstain).lower())
    monkeypatch.setenv("REFIT_SERVE_FREEZE_HEAP", "false")
    with TestClient(service_app) as client:
        before = out_of_scope_count(client.get("/metrics").text)
        [answer] = client.post("/classify", json={"texts": ["hello the unknown"]}).json()
        assert answer["in_scope"] is False and isinstance(answer["unknown_score"], float)
        if abstain:
            assert answer["label"] is None and answer["best_guess"] == answer["top_k"][0]["label"]
        else:
            assert answer["label"] == answer["top_k"][0]["label"] and "best_guess" not in answer
        served = client.get("/model").json()["open_set"]
        assert served["abstaining"] is abstain
        trained = ModelRegistry(served_home).get("tiny:production").manifest["rows"]["train"]
        assert served["reference_rows"] == trained  # under the cap: every training row
        assert out_of_scope_count(client.get("/metrics").text) == before + 1


def out_of_scope_count(metrics: str) -> float:
    """The value of ``refit_out_of_scope_texts_total`` for model tiny (0 before its first sample)."""
    import re

    found = re.search(r'^refit_out_of_scope_texts_total\{model="tiny"\} (\S+)$', metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_in_scope_texts_keep_their_label(client: Any, served_home: Path) -> None:
    [answer] = client.post("/classify", json={"texts": ["reset my password"]}).json()
    assert answer["label"] is not None and answer["in_scope"] in (True, False)
    assert answer["unknown_score"] is not None


def test_a_trained_out_of_scope_class_abstains_with_the_best_in_scope_guess(
    tmp_path: Path, make_config: Callable[..., Any], registry: ModelRegistry
) -> None:
    from service.predictor import load_model

    oos = pd.DataFrame(
        {
            "text": [
                f"hello the {w} {s}" for w in ("a", "new", "unknown") for s in ("now", "today", "please", "")
            ],
            "label": "oos",
        }
    )
    data = tmp_path / "with-oos.csv"
    pd.concat([tiny_rows(), oos], ignore_index=True).to_csv(data, index=False)
    config = make_config(strategy="head", oos_label="oos", test_fraction=0.2)
    version = train_model(data, config, registry=registry).version
    assert version is not None
    model = load_model(version, "torch", "cpu", 1, top_k=3, abstain=True)
    oos_answer, known_answer = model.classify(["hello the new today", "reset my password now"])
    assert oos_answer.top_k[0]["label"] == "oos"
    assert oos_answer.in_scope is False and oos_answer.label != "oos"
    assert (
        oos_answer.to_response()["label"] is None
        and oos_answer.to_response()["best_guess"] == oos_answer.label
    )
    assert known_answer.label == "password"


def test_an_oos_label_the_data_lacks_is_a_clear_error(
    tiny_csv: Path, make_config: Callable[..., Any], registry: ModelRegistry
) -> None:
    from training.errors import DataError

    with pytest.raises(DataError, match="oos_label 'out_of_scope' is not a label of the data"):
        train_model(tiny_csv, make_config(strategy="head", oos_label="out_of_scope"), registry=registry)
