"""The supervised contrastive loss, its label-balanced batches, label names as training rows, and
both through `refit train`."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import run_cli, tiny_rows
from training.artifacts import CONFIG_FILE
from training.context import TrainContext
from training.contrastive import ClassBalancedBatches, supervised_contrastive_loss
from training.data import split_frames
from training.errors import ConfigError
from training.finetune import TrainingLoss, _make_loader
from training.label_names import add_label_name_rows, name_text


def test_loss_matches_the_formula_on_two_clusters() -> None:
    # Rows 0,1 point one way, rows 2,3 another: each row's one positive has similarity 1/t and
    # its two negatives 0, so every anchor's loss is -log(e^(1/t) / (e^(1/t) + 2)).
    embeddings = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    for t in (1.0, 0.1):
        expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
        assert supervised_contrastive_loss(embeddings, labels, t).item() == pytest.approx(expected, rel=1e-5)
    swapped = torch.tensor([0, 1, 0, 1])  # the same points, each positive now the far one
    assert supervised_contrastive_loss(embeddings, swapped, 0.1) > supervised_contrastive_loss(
        embeddings, labels, 0.1
    )


def test_rows_without_a_positive_contribute_nothing() -> None:
    embeddings = torch.randn(3, 4, requires_grad=True)
    alone = supervised_contrastive_loss(embeddings, torch.tensor([0, 1, 2]), 0.1)
    assert alone.item() == 0.0
    alone.backward()  # still part of the graph: a batch of singletons does not break training
    pair_only = supervised_contrastive_loss(embeddings, torch.tensor([0, 0, 2]), 0.1)
    pair = supervised_contrastive_loss(embeddings[:2], torch.tensor([0, 0]), 0.1)
    assert pair.item() == 0.0  # two rows: the only other row is the positive
    assert pair_only.item() > 0.0  # with a third row to push away, the pair has something to learn


def test_balanced_batches_hold_four_rows_of_each_of_their_labels() -> None:
    labels = np.repeat(np.arange(8), 12)  # 96 rows, 8 labels
    sampler = ClassBalancedBatches(labels, batch_size=16, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6  # a shuffled loader's count: ceil(96 / 16)
    for batch in batches:
        assert sorted(Counter(labels[batch].tolist()).values()) == [4, 4, 4, 4]
    assert len({i for b in batches for i in b}) == 96  # one epoch reads every row once
    assert batches == list(ClassBalancedBatches(labels, batch_size=16, seed=3))
    assert batches != list(ClassBalancedBatches(labels, batch_size=16, seed=4))


def test_with_few_labels_each_takes_an_equal_share_of_the_batch() -> None:
    labels = np.repeat(np.arange(3), 40)  # 3 labels: fewer than the 8 a batch of 32 would hold
    batches = list(ClassBalancedBatches(labels, batch_size=32, seed=0))
    assert len(batches) == 4
    for batch in batches:
        assert sorted(Counter(labels[batch].tolist()).values()) == [10, 10, 10]
    assert len({i for b in batches for i in b}) == 120  # the epoch still reads every row
    five = np.repeat(np.arange(5), 4)  # a batch smaller than 4 rows: one label's pair
    pairs = list(ClassBalancedBatches(five, batch_size=2, seed=0))
    assert len(pairs) == 10 and all(len(b) == 2 and len(set(five[b].tolist())) == 1 for b in pairs)
    assert len({i for b in pairs for i in b}) == 20


def test_a_label_with_few_rows_is_drawn_again_from_a_fresh_shuffle() -> None:
    labels = np.array([0] * 2 + [1] * 20 + [2] * 20)
    batches = list(ClassBalancedBatches(labels, batch_size=8, seed=0))
    assert len(batches) == 6
    for batch in batches:
        counts = Counter(labels[batch].tolist())
        assert len(counts) == 2 and all(c >= 2 for c in counts.values()), counts
        assert len(set(batch)) == len(batch)


def test_label_names_become_one_training_row_each() -> None:
    assert name_text("card_arrival") == "card arrival"
    assert name_text(" top-up  limit ") == "top up limit"
    splits = split_frames(tiny_rows(), validation_fraction=0.2, test_fraction=0.25, seed=0)
    named = add_label_name_rows(splits, "text")
    added = named.train.iloc[len(splits.train) :]
    assert added["label"].tolist() == splits.labels
    assert added["text"].tolist() == [name_text(label) for label in splits.labels]
    assert named.validation is splits.validation and named.test is splits.test
    with pytest.raises(ConfigError, match="label names as texts; found image inputs"):
        add_label_name_rows(splits, "image")


def test_contrastive_training_loss_adds_the_weighted_term(make_config: Callable[..., Any]) -> None:
    config = make_config(strategy="partial", contrastive_weight=0.5, contrastive_temperature=0.2)
    splits = split_frames(tiny_rows(), validation_fraction=0.2, test_fraction=0.25, seed=0)
    ctx = TrainContext.create(config, splits)
    loader = _make_loader(ctx, seed=0)
    assert isinstance(loader.batch_sampler, ClassBalancedBatches)
    batch = next(iter(loader))
    assert min(Counter(batch["labels"].tolist()).values()) >= 2  # every row has a positive
    model = ctx.fresh_model().eval()  # no dropout: the two computations below see the same logits
    loss = TrainingLoss(ctx, ctx.device)
    with torch.no_grad():
        logits, embeddings = model(*batch["inputs"], with_embeddings=True)
        expected = loss.cross_entropy(logits, batch["labels"]) + 0.5 * supervised_contrastive_loss(
            embeddings, batch["labels"], 0.2
        )
        assert loss(model, batch["inputs"], batch["labels"]).item() == pytest.approx(expected.item())
        plain = TrainingLoss(TrainContext.create(make_config(strategy="partial"), splits), ctx.device)
        assert plain(model, batch["inputs"], batch["labels"]).item() == pytest.approx(
            loss.cross_entropy(logits, batch["labels"]).item()
        )


def test_refit_train_with_the_few_shot_settings(
    tmp_path: Path,
    tiny_base_model: Path,
    tiny_csv: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training.registry import ModelRegistry

    home = tmp_path / "home"
    args = ["train", str(tiny_csv), "--strategy", "partial", "--name", "t", "--home", str(home)]
    args += ["--base-model", str(tiny_base_model), "--set", "max_length=16", "--set", "profile_rows=10"]
    args += ["--set", "contrastive_weight=0.5", "--set", "label_name_examples=true", "--set", "epochs=2"]
    code, out = run_cli(args, capsys, monkeypatch)
    assert code == 0, out
    version = ModelRegistry(home).get("t:production")
    train = pd.read_parquet(version.path / "data" / "train.parquet")
    labels = sorted(pd.read_csv(tiny_csv)["label"].unique())
    assert set(zip(train["text"], train["label"], strict=True)) >= {(name_text(x), x) for x in labels}
    config = json.loads((version.path / CONFIG_FILE).read_text())
    assert config["contrastive_weight"] == 0.5 and config["label_name_examples"] is True
