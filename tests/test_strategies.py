"""Model tests: every strategy learns the tiny data; LoRA merge parity; the auto ladder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import tiny_rows
from training.calibration import fit_temperature
from training.context import TrainContext
from training.data import DataReport, DatasetSplits, split_frames
from training.finetune import class_weights, find_attention_projections, prepare_lora
from training.registry import ModelRegistry
from training.strategies import evaluate_split, run_ladder, run_strategy, stop_reason


def _context(make_config: Callable[..., Any], **overrides: Any) -> TrainContext:
    config = make_config(**overrides)
    splits = split_frames(tiny_rows(), validation_fraction=0.2, test_fraction=0.25, seed=config.seed)
    return TrainContext.create(config, splits)


@pytest.mark.parametrize(
    ("strategy", "min_train_accuracy", "trainable"),
    [
        ("head", 1.0, lambda n: n == 32 * 3 + 3),
        ("partial", 1.0, lambda n: 0 < n < 15_000),
        ("lora", 1.0, lambda n: 0 < n < 10_000),
        ("full", 1.0, lambda n: n > 15_000),
    ],
)
def test_strategy_memorises_tiny_data(
    make_config: Callable[..., Any],
    strategy: str,
    min_train_accuracy: float,
    trainable: Callable[[int], bool],
) -> None:
    ctx = _context(make_config, strategy=strategy, partial_layers=1)
    result = run_strategy(strategy, ctx)
    train = evaluate_split(result, ctx, "train")
    assert train.accuracy >= min_train_accuracy
    assert trainable(result.trainable_params), result.trainable_params
    assert result.strategy == strategy
    assert not any("lora" in name for name, _ in result.model.named_parameters())


def test_baseline_is_nearest_class_centroid(make_config: Callable[..., Any]) -> None:
    """An untrained tiny encoder cannot memorise, so check the rule itself against numpy."""
    ctx = _context(make_config, strategy="baseline")
    result = run_strategy("baseline", ctx)
    emb, y = ctx.frozen_embeddings("train"), ctx.label_ids("train")
    test_emb = ctx.frozen_embeddings("test")
    centroids = np.stack([emb[y == k].mean(axis=0) for k in range(3)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    unit = test_emb / np.linalg.norm(test_emb, axis=1, keepdims=True)
    expected = (unit @ centroids.T).argmax(axis=1)
    assert (ctx.predict(result.model, "test").predicted == expected).all()
    assert result.trainable_params == 0
    assert result.details["temperature"] > 0


def test_fine_tuning_changes_the_encoder_only_where_allowed(
    make_config: Callable[..., Any],
) -> None:
    ctx = _context(make_config, strategy="partial", partial_layers=1)
    before = {k: v.clone() for k, v in ctx.fresh_model().state_dict().items()}
    after = run_strategy("partial", ctx).model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k].cpu())}
    assert any(k.startswith("encoder.encoder.layer.1.") for k in changed)
    assert not any(k.startswith(("encoder.encoder.layer.0.", "encoder.embeddings.")) for k in changed)


def test_lora_ships_merged_into_a_plain_encoder(make_config: Callable[..., Any]) -> None:
    ctx = _context(make_config, strategy="lora")
    model = run_strategy("lora", ctx).model
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert type(model.encoder) is type(ctx.fresh_model().encoder)  # no PEFT wrapper left to serve


def test_lora_merge_parity_on_trained_adapters(make_config: Callable[..., Any]) -> None:
    """Adapters with non-zero weights: merging must not change the logits."""
    from training.finetune import merge_lora

    ctx = _context(make_config, strategy="lora")
    model = ctx.fresh_model()
    prepare_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    unmerged = ctx.predict(model, "train").logits
    diff = merge_lora(model, ctx)
    merged = ctx.predict(model, "train").logits
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert diff <= 1e-4
    assert np.abs(unmerged - merged).max() <= 1e-4


def test_attention_projections_are_found(make_config: Callable[..., Any]) -> None:
    ctx = _context(make_config)
    assert find_attention_projections(ctx.fresh_model().encoder) == ["query", "key", "value"]


def test_same_seed_reproduces_the_same_weights(make_config: Callable[..., Any]) -> None:
    from transformers import set_seed

    weights = []
    for _ in range(2):
        set_seed(3)
        ctx = _context(make_config, strategy="full", epochs=2, seed=3)
        weights.append(run_strategy("full", ctx).model.head.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1])


def test_auto_ladder_stops_at_target_and_returns_the_best(make_config: Callable[..., Any]) -> None:
    ctx = _context(
        make_config,
        strategy="auto",
        auto_ladder=["baseline", "head", "full"],
        auto_target_macro_f1=0.01,  # any rung reaches it: the ladder stops at the first
    )
    outcome = run_ladder(ctx)
    assert [r.strategy for r in outcome.rungs] == ["baseline"]
    assert outcome.best.strategy == "baseline" and "target" in outcome.stopped_because


def test_auto_ladder_returns_the_best_rung_it_climbed(make_config: Callable[..., Any]) -> None:
    ctx = _context(make_config, strategy="auto", auto_ladder=["baseline", "head"], auto_target_macro_f1=1.0)
    outcome = run_ladder(ctx)
    assert outcome.rungs[0].strategy == "baseline"
    best = max(outcome.rungs, key=lambda r: r.validation_macro_f1)
    assert outcome.best.strategy == best.strategy


@pytest.mark.parametrize(
    ("best", "gain", "climbed", "expected"),
    [
        (0.80, 0.80, 1, None),  # first rung below target: climb
        (0.90, 0.10, 2, None),  # a good gain: climb
        (0.90, 0.001, 2, "gained"),  # too little gain: stop
        (0.97, 0.001, 2, "target"),  # target met: stop, whatever the gain
        (0.99, 0.99, 1, "target"),  # first rung already meets the target
    ],
)
def test_ladder_stop_rule(best: float, gain: float, climbed: int, expected: str | None) -> None:
    reason = stop_reason("rung", best, gain, climbed, target=0.97, min_gain=0.005)
    assert (reason is None) if expected is None else (expected in (reason or ""))


def test_class_weights_balance_rare_labels() -> None:
    weights = class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights[1] == pytest.approx(3 * weights[0])
    assert weights[2] == 0


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 3
    probs = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in probs])
    assert fit_temperature(logits, y) == pytest.approx(2.5, rel=0.1)


def test_head_is_refitted_on_validation_data_with_the_chosen_c(make_config: Callable[..., Any]) -> None:
    ctx = _context(make_config, strategy="head")
    refitted = run_strategy("head", ctx)
    assert refitted.details["refit_on_validation"] is False  # not before selection is over
    before = refitted.model.head.weight.detach().clone()
    refitted.finalize()
    assert refitted.details["refit_on_validation"] is True
    assert not torch.allclose(before, refitted.model.head.weight)
    ctx_plain = _context(make_config, strategy="head", refit_head=False)
    plain = run_strategy("head", ctx_plain)
    assert plain.details["refit_on_validation"] is False
    assert plain.details["C"] == refitted.details["C"]
    assert not torch.allclose(plain.model.head.weight, refitted.model.head.weight)


def test_reprobe_replaces_the_fine_tuned_head_with_a_calibrated_probe(
    make_config: Callable[..., Any],
) -> None:
    ctx = _context(make_config, strategy="full", epochs=5, reprobe_after_finetune=True)
    result = run_strategy("full", ctx)
    result.finalize()
    assert result.details["refit_on_validation"] is True
    assert result.details["temperature"] == result.details["reprobe"]["temperature"]
    assert evaluate_split(result, ctx, "train").accuracy == 1.0


def test_no_strategy_is_scored_on_rows_it_trained_on(make_config: Callable[..., Any]) -> None:
    """Validation rows carry the phrases of training rows with the labels rotated, three times over.

    A rung that never trained on them scores about 0 there; one refitted on train + validation
    learns the rotated majority and scores near 1. Selection must see the former.
    """
    data = tiny_rows(copies=1)
    labels = sorted(data["label"].unique())
    rotated = data.assign(label=data["label"].map(dict(zip(labels, labels[1:] + labels[:1], strict=True))))
    validation = pd.concat([rotated] * 3, ignore_index=True)
    report = DataReport(rows=len(data))
    splits = DatasetSplits(data, validation, data.copy(), labels, "sha256:test", report)
    config = make_config(strategy="auto", auto_ladder=["baseline", "head", "lora"], auto_target_macro_f1=1.0)
    config = config.model_copy(update={"auto_min_gain": -1.0, "epochs": 2})
    ctx = TrainContext.create(config, splits)
    outcome = run_ladder(ctx)
    assert [r.strategy for r in outcome.rungs] == ["baseline", "head", "lora"]
    assert all(r.validation_macro_f1 < 0.5 for r in outcome.rungs), [r.to_dict() for r in outcome.rungs]
    outcome.best.finalize()  # only now may the chosen model learn the validation rows
    if outcome.best.strategy != "baseline":
        assert evaluate_split(outcome.best, ctx, "validation").macro_f1 > 0.5


def test_cross_validated_selection_trains_on_every_row_and_scores_out_of_fold(
    tiny_csv: Path, make_config: Callable[..., Any], registry: ModelRegistry
) -> None:
    from training.open_set import load_open_set
    from training.pipeline import train_model

    config = make_config(strategy="auto", auto_ladder=["baseline", "head"], selection="cv", cv_folds=3)
    outcome = train_model(tiny_csv, config, registry=registry)
    version = outcome.version
    assert version is not None and outcome.validation is None
    assert version.manifest["rows"]["validation"] == 0  # no validation split carved out
    assert [r["strategy"] for r in outcome.ladder] == ["baseline", "head"]
    details = version.manifest["details"]
    assert details["cv_folds"] == 3 and 0.0 <= details["cv_macro_f1"] <= 1.0
    if version.manifest["strategy"] == "head":
        assert set(details["cv_log_loss_by_C"]) == {"0.01", "0.1", "1.0", "10.0"}
    chosen = next(r for r in outcome.ladder if r["strategy"] == version.manifest["strategy"])
    assert chosen["validation_macro_f1"] == details["cv_macro_f1"]
    loaded = load_open_set(version.path)
    assert loaded is not None and loaded[0].validation_rows == version.manifest["rows"]["train"]


def test_cross_validated_selection_refuses_fine_tuning() -> None:
    from training.config import load_training_config
    from training.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"selection 'cv' covers the strategies \['baseline', 'head'\]; found \['lora'\]"
    ):
        load_training_config(overrides={"strategy": "lora", "selection": "cv"})
    assert (
        load_training_config(overrides={"selection": "cv", "auto_ladder": "baseline,head"}).selection == "cv"
    )
