"""`group_column`: rows that belong together stay on one side of every split and fold, through
`refit train` as the README shows it, and through a retrain's child."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from tests.helpers import run_cli, tiny_rows

if TYPE_CHECKING:
    from training.registry import ModelVersion


def grouped_rows() -> pd.DataFrame:
    """The tiny intents, each phrase sent three times by one customer (12 customers)."""
    rows = tiny_rows(copies=3)
    return rows.assign(customer=rows["text"].str.rsplit(" ", n=1).str[0].str.replace(" ", "-"))


def groups_of(version: ModelVersion, split: str) -> set[str]:
    from training.artifacts import read_split

    return set(read_split(version, split)["group"])


@pytest.fixture
def train_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_base_model: Path
):  # type: ignore[no-untyped-def]
    home = tmp_path / "home"

    def call(data: Path, *args: str) -> tuple[int, str]:
        flags = ["--base-model", str(tiny_base_model), "--set", "max_length=16", "--set", "profile_rows=10"]
        return run_cli(
            ["train", str(data), "--name", "t", "--home", str(home), *flags, *args], capsys, monkeypatch
        )

    call.home = home  # type: ignore[attr-defined]
    return call


def test_refit_train_keeps_each_group_on_one_side_of_the_splits(train_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from training.artifacts import read_split
    from training.registry import ModelRegistry

    data = tmp_path / "tickets.csv"
    grouped_rows().to_csv(data, index=False)
    code, out = train_cli(data, "--strategy", "head", "--set", "group_column=customer")
    assert code == 0, out
    version = ModelRegistry(train_cli.home).get("t:production")
    train, validation, test = (groups_of(version, s) for s in ("train", "validation", "test"))
    assert train and validation and test
    assert not (train & validation) and not (train & test) and not (validation & test)
    assert train | validation | test == set(grouped_rows()["customer"])
    tested = version.manifest["test_set"]
    assert tested["group_column"] == "customer" and tested["groups"] == len(test)
    assert "belong to a group that also has training rows" not in out
    report = (version.path / "report.html").read_text()
    assert f"20% split of tickets.csv by customer, {tested['rows']} rows of {len(test)} groups" in report
    assert (
        f"on the test set (20% split of tickets.csv by customer, {tested['rows']} rows of {len(test)} groups"
        in out
    )
    # Row by row, the same data puts copies of one customer's ticket on both sides.
    code, out = train_cli(data, "--strategy", "head")
    assert code == 0, out
    rows = ModelRegistry(train_cli.home).get("t:latest")

    def customers(split: str) -> set[str]:
        return set(read_split(rows, split)["text"].str.rsplit(" ", n=1).str[0])

    assert customers("train") & customers("test")


def test_an_unknown_group_column_is_a_clear_error(train_cli, tmp_path: Path, surfaces: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "tickets.csv"
    grouped_rows().to_csv(data, index=False)
    code, out = train_cli(data, "--strategy", "head", "--set", "group_column=account")
    assert code == 2 and "Column(s) ['account'] not found in" in out, out
    assert "Found columns: ['text', 'label', 'customer']" in out and "Traceback" not in out
    code, out = train_cli(surfaces, "--strategy", "head", "--set", "group_column=part")
    assert code == 2 and "group_column 'part' not found in" in out, out
    assert "a folder of class folders has no columns" in out


def test_too_few_groups_for_the_splits_is_a_clear_error(train_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "tickets.csv"
    grouped_rows().assign(customer="acme").to_csv(data, index=False)  # one customer sent them all
    code, out = train_cli(data, "--strategy", "head", "--set", "group_column=customer")
    assert code == 2 and "group_column 'customer' leaves 1 group for the test split" in out, out
    grouped_rows().assign(customer=lambda f: f["label"]).to_csv(data, index=False)  # one a label
    code, out = train_cli(data, "--strategy", "head", "--set", "group_column=customer")
    assert code == 2 and "leaves no test rows: every label's groups are needed for training" in out, out


def test_selection_cv_folds_and_a_test_file_see_the_groups(train_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from training.registry import ModelRegistry

    data, held_out = tmp_path / "tickets.csv", tmp_path / "held_out.csv"
    grouped_rows().to_csv(data, index=False)
    # Two of the test file's rows come from a customer the training data has.
    test = tiny_rows(copies=1).assign(text=lambda f: f["text"] + " again", customer="new")
    test.loc[:1, "customer"] = grouped_rows()["customer"].iloc[0]
    test.to_csv(held_out, index=False)
    args = ["--strategy", "head", "--set", "selection=cv", "--set", "group_column=customer"]
    code, out = train_cli(data, *args, "--test-file", str(held_out))
    assert code == 0, out
    assert "2 test rows belong to a group that also has training rows" in out
    version = ModelRegistry(train_cli.home).get("t:production")
    assert version.manifest["details"]["cv_folds"] == 5
    assert version.manifest["test_set"]["groups"] == 2  # 'new' and the shared customer


def test_group_folds_hold_out_each_group_once() -> None:
    from training.groups import stratified_group_folds

    rows = grouped_rows()
    folds = stratified_group_folds(rows["label"].to_numpy(), rows["customer"].to_numpy(), 5, seed=0)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held) == list(range(len(rows)))
    for fitted, held_out in folds:
        assert not set(rows["customer"].iloc[fitted]) & set(rows["customer"].iloc[held_out])


def test_a_label_whose_groups_all_fell_outside_training_gets_one_back() -> None:
    from training.groups import GROUP, group_split

    rows = grouped_rows().rename(columns={"customer": GROUP})
    # 'refund' in two groups: whichever side they fall, training keeps one.
    rows = rows[(rows["label"] != "refund") | rows[GROUP].isin(["refund-my-payment", "money-back-please"])]
    for seed in range(10):
        train, validation, test, notes = group_split(
            rows.reset_index(drop=True), (0.1, 0.2), seed, "customer"
        )
        assert set(train["label"]) == {"refund", "password", "shipping"}
        assert not set(train[GROUP]) & (set(validation[GROUP]) | set(test[GROUP]))
        if set(test["label"]) != set(rows["label"]):
            assert any("without test rows" in note for note in notes), notes


def test_blank_groups_are_groups_of_their_own_and_leave_one_group_out_distances() -> None:
    from training.groups import GROUP, group_ids, read_groups
    from training.novelty import nearest_distance

    groups = read_groups(pd.Series(["a", "", "a", None]))
    assert list(groups) == ["a", "row:1", "a", "row:3"]
    # Rows added later without a group (pseudo-labelled inputs) are groups of their own too.
    added = pd.concat([pd.DataFrame({GROUP: groups}), pd.DataFrame({"text": ["x", "y"]})], ignore_index=True)
    assert list(group_ids(added)) == ["a", "row:1", "a", "row:3", "added:4", "added:5"]
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.7, 0.7]])
    alone = nearest_distance(embeddings, embeddings, exclude_self=True)
    grouped = nearest_distance(embeddings, embeddings, exclude_self=True, groups=groups.to_numpy())
    assert alone[0] < 1e-3 and grouped[0] > 0.2  # its twin in group 'a' no longer counts
    assert grouped[1] == pytest.approx(alone[1]) and grouped[3] == pytest.approx(alone[3])


def test_refit_train_keeps_the_parts_of_an_image_table_whole(
    surfaces: Path,
    tiny_vision_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training.artifacts import read_split
    from training.registry import ModelRegistry

    images = sorted(surfaces.glob("*/*.png"))
    table = tmp_path / "parts.csv"
    pd.DataFrame(
        {
            "path": [str(p) for p in images],
            "label": [p.parent.name for p in images],
            "part": [
                f"{p.parent.name}-{int(p.stem.rsplit('-', 1)[1]) // 2}" for p in images
            ],  # 2 photos a part
        }
    ).to_csv(table, index=False)
    home = tmp_path / "bentoml"
    args = ["train", str(table), "--base-model", str(tiny_vision_model), "--strategy", "head"]
    args += ["--name", "parts", "--home", str(home), "--set", "group_column=part"]
    code, out = run_cli(args, capsys, monkeypatch)
    assert code == 0, out
    version = ModelRegistry(home).get("parts:production")
    parts = {s: set(read_split(version, s)["meta_part"]) for s in ("train", "validation", "test")}
    assert not parts["train"] & parts["test"] and not parts["train"] & parts["validation"]
    assert "split of parts.csv by part" in out


@pytest.mark.slow  # a `refit train` child
def test_a_retrain_child_keeps_the_groups_and_feedback_rows_are_their_own(
    tiny_base_model: Path, tmp_path: Path
) -> None:
    from monitoring.candidate import train_candidate
    from monitoring.feedback import merge_feedback
    from monitoring.retrain import read_rows
    from training.config import TrainingConfig
    from training.pipeline import train_model
    from training.registry import ModelRegistry

    data = tmp_path / "tickets.csv"
    grouped_rows().to_csv(data, index=False)
    registry = ModelRegistry(tmp_path / "bentoml")
    config = TrainingConfig(
        name="t", base_model=str(tiny_base_model), strategy="head", max_length=16, profile_rows=10,
        group_column="customer",
    )  # fmt: skip
    production = train_model(data, config, registry=registry).version
    assert production is not None
    original = pd.concat([read_rows(production, s) for s in ("train", "validation")], ignore_index=True)
    assert set(original["group"]) == groups_of(production, "train") | groups_of(production, "validation")
    feedback = pd.DataFrame({"text": ["refund it all", "parcel lost again"], "label": ["refund", "shipping"]})
    version = train_candidate(
        production, merge_feedback(original, feedback), registry, strategy=None, timeout_s=300,
        workdir=tmp_path, export=False, test=read_rows(production, "test"),
    )  # fmt: skip
    child = registry.get(f"t:{version}")
    sides = {s: groups_of(child, s) for s in ("train", "validation")}
    assert not sides["train"] & sides["validation"]
    named = set(grouped_rows()["customer"])
    # The original customers keep their groups; each feedback row is a group of its own.
    assert (sides["train"] | sides["validation"]) - named == {
        g for g in sides["train"] | sides["validation"] if g.startswith("row:")
    }
    assert len([g for g in sides["train"] | sides["validation"] if g.startswith("row:")]) == 2
    assert groups_of(child, "test") == groups_of(production, "test")


def test_labels_with_fewer_rows_than_folds_still_split() -> None:
    from training.groups import GROUP, group_split

    rows = tiny_rows(copies=1).assign(**{GROUP: lambda f: f["text"]})  # 4 rows a label, each alone
    train, validation, test, _ = group_split(rows, (0.1, 0.2), 0, "customer")
    assert len(test) and len(train) + len(validation) + len(test) == len(rows)
    assert set(train["label"]) == set(rows["label"])


def test_the_drift_reference_novelty_leaves_each_rows_group_out(
    tiny_base_model: Path, tmp_path: Path
) -> None:
    from monitoring.features import NOVELTY_COLUMN
    from monitoring.reference import load_reference
    from training.config import TrainingConfig
    from training.novelty import nearest_distance
    from training.pipeline import train_model
    from training.registry import ModelRegistry

    data = tmp_path / "tickets.csv"
    grouped_rows().to_csv(data, index=False)
    config = TrainingConfig(
        name="t", base_model=str(tiny_base_model), strategy="head", max_length=16, profile_rows=100,
        group_column="customer",
    )  # fmt: skip
    version = train_model(data, config, registry=ModelRegistry(tmp_path / "bentoml")).version
    assert version is not None
    reference = load_reference(version)
    novelty = reference.features[NOVELTY_COLUMN].to_numpy()
    # A customer's other copies of a ticket no longer make it look familiar.
    alone = nearest_distance(reference.embeddings, reference.embeddings, exclude_self=True)
    assert np.all(novelty >= alone - 1e-6) and np.mean(novelty > alone + 1e-3) > 0.5
