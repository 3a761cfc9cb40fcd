"""The inspection operating point: the normal class's logit lowered until few defects are missed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_cli
from training.artifacts import load_version_model, read_split, split_inputs
from training.operating_point import choose_operating_point, fit_normal_shift
from training.registry import ModelRegistry


def test_the_smallest_shift_that_meets_the_target_is_chosen() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3))
    y = rng.integers(0, 3, size=200)
    defective = y != 0
    for target in (0.0, 0.1, 0.3):
        shift = fit_normal_shift(logits, y, normal=0, target=target)
        shifted = logits.copy()
        shifted[:, 0] -= shift
        missed = (shifted.argmax(axis=1)[defective] == 0).mean()
        assert missed <= target
        # A hair less shift misses more than the target: the shift is the smallest one.
        if shift > 0:
            shifted[:, 0] += 2e-4
            assert (shifted.argmax(axis=1)[defective] == 0).mean() > target
    point = choose_operating_point(logits, y, ["ok", "dent", "scratch"], "ok", 0.1)
    assert point.missed_after <= 0.1 < point.missed_before
    assert point.rows == 200 and point.defective_rows == int(defective.sum())


def test_a_model_that_already_meets_the_target_is_left_alone() -> None:
    logits = np.array([[5.0, 0.0], [0.0, 5.0], [0.0, 4.0]])
    assert fit_normal_shift(logits, np.array([0, 1, 1]), normal=0, target=0.0) == 0.0


def test_refit_train_sets_the_operating_point_on_validation_rows(
    surfaces: Path,
    tiny_vision_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "bentoml"
    args = ["train", str(surfaces), "--base-model", str(tiny_vision_model), "--strategy", "head"]
    sets = [
        "--set",
        "normal_label=free",
        "--set",
        "max_missed_defect_rate=0",
        "--set",
        "validation_fraction=0.3",
    ]
    code, out = run_cli([*args, "--name", "surfaces", "--home", str(home), *sets], capsys, monkeypatch)
    assert code == 0, out
    assert "operating point: the 'free' logit lowered by" in out and "missed-defect rate" in out
    version = ModelRegistry(home).get("surfaces:production")
    point = version.manifest["details"]["operating_point"]
    assert "operating point" in (version.path / "report.html").read_text()
    assert point["missed_after"] == 0.0 and point["max_missed_defect_rate"] == 0.0
    assert point["missed_before"] > 0 and point["logit_shift"] > 0  # the tiny ViT does miss defects
    # The shift lives in the saved model: its own validation predictions miss no defect.
    model, processor = load_version_model(version)
    from training.inference import predict

    validation = read_split(version, "validation")
    labels = version.manifest["labels"]
    predicted = predict(model, processor, split_inputs(version, validation)).probabilities.argmax(axis=1)
    defective = (validation["label"] != "free").to_numpy()
    assert not (predicted[defective] == labels.index("free")).any()
    # The same training without the operating point differs only in the normal class's bias.
    plain_args = [*args, "--name", "plain", "--home", str(home), *sets[:2], *sets[4:]]
    code, out = run_cli(plain_args, capsys, monkeypatch)
    assert code == 0, out
    plain, _ = load_version_model(ModelRegistry(home).get("plain:production"))
    free = labels.index("free")
    shift = np.zeros(len(labels), dtype=np.float32)
    shift[free] = point["logit_shift"]
    np.testing.assert_allclose(
        model.head.bias.detach().numpy(), plain.head.bias.detach().numpy() - shift, atol=1e-5
    )
    np.testing.assert_allclose(
        model.head.weight.detach().numpy(), plain.head.weight.detach().numpy(), atol=1e-6
    )


def test_an_operating_point_without_a_normal_label_is_refused(
    surfaces: Path,
    tiny_vision_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ["train", str(surfaces), "--base-model", str(tiny_vision_model), "--home", str(tmp_path)]
    code, out = run_cli([*args, "--set", "max_missed_defect_rate=0.02"], capsys, monkeypatch)
    assert code == 2 and "max_missed_defect_rate needs normal_label" in out, out


def test_under_cross_validation_the_operating_point_is_chosen_on_every_training_row_held_out(
    surfaces: Path,
    tiny_vision_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "bentoml"
    args = ["train", str(surfaces), "--base-model", str(tiny_vision_model), "--strategy", "head"]
    args += ["--home", str(home), "--set", "normal_label=free", "--set", "selection=cv"]
    code, out = run_cli([*args, "--name", "plain"], capsys, monkeypatch)
    assert code == 0, out
    code, out = run_cli(
        [*args, "--name", "surfaces", "--set", "max_missed_defect_rate=0"], capsys, monkeypatch
    )
    assert code == 0, out
    version = ModelRegistry(home).get("surfaces:production")
    point = version.manifest["details"]["operating_point"]
    train = read_split(version, "train")
    defective = int((train["label"] != "free").sum())
    assert (
        point["source"] == "out-of-fold"
        and point["rows"] == len(train)
        and len(read_split(version, "validation")) == 0
    )
    assert point["defective_rows"] == defective and point["missed_after"] == 0.0
    assert point["missed_before"] > 0 and point["logit_shift"] > 0  # out of fold, the tiny ViT misses some
    assert f"chosen on {len(train)} out-of-fold rows ({defective} defective)" in " ".join(out.split())
    # The shift is folded into the head fitted on every row: only the normal class's bias moved.
    labels = version.manifest["labels"]
    model, _ = load_version_model(version)
    plain, _ = load_version_model(ModelRegistry(home).get("plain:production"))
    shift = np.zeros(len(labels), dtype=np.float32)
    shift[labels.index("free")] = point["logit_shift"]
    np.testing.assert_allclose(
        model.head.bias.detach().numpy(), plain.head.bias.detach().numpy() - shift, atol=1e-5
    )
