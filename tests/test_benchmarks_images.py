"""Smoke runs of the image benchmarks on generated surfaces and the tiny ViT: the results formats
other tools read, kept from rotting."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # benchmarks train models and start servers


@pytest.fixture
def tiles_like(surfaces: Path, tmp_path: Path) -> Path:
    """A folder shaped like ../shared/datasets/magnetic_tiles: manifest.csv (path, label, lighting)
    with `free` as the no-defect class."""
    rows = [
        {"path": str(p), "label": p.parent.name, "lighting": f"exp{1 + i % 6}"}
        for i, p in enumerate(sorted(surfaces.rglob("*.png")))
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path


def test_train_tiles_smoke(tiles_like: Path, tiny_vision_model: Path, tmp_path: Path) -> None:
    from benchmarks import train_tiles

    rows = train_tiles.main(
        [
            "--data", str(tiles_like),
            "--base-model", str(tiny_vision_model),
            "--budgets", "3,all",
            "--seeds", "0",
            "--strategies", "head,lora",
            "--set", "epochs=1",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "train_tiles.json").read_text())
    assert saved == rows and len(rows) == 4
    assert set(rows[0]) == {
        "strategy", "base_model", "per_class", "seed", "accuracy", "macro_f1", "missed_defect_rate",
        "train_seconds", "peak_rss_mb", "trainable_params",
    }  # fmt: skip
    assert {r["per_class"] for r in rows} == {"3", "all"}
    assert all(0.0 <= r["missed_defect_rate"] <= 1.0 for r in rows)
    table = (tmp_path / "train_tiles.md").read_text()
    assert "| lora |" in table and "Settings: `epochs=1`." in table  # the run's --set values are named
    # --dev: the seed's test images stay unseen; its own test set is 30% of the other 70%.
    train_tiles.main(
        ["--data", str(tiles_like), "--base-model", str(tiny_vision_model), "--budgets", "all",
         "--seeds", "0", "--strategies", "head", "--dev", "--name", "dev", "--out", str(tmp_path)]
    )  # fmt: skip
    sizes = [
        re.search(r"(\d+) images per seed", (tmp_path / f"{name}.md").read_text())
        for name in ("train_tiles", "dev")
    ]
    counts = [int(found[1]) for found in sizes if found]
    assert len(counts) == 2 and counts[1] < counts[0], counts
    # Frozen embeddings computed once and cached give the rows that embedding per cell gives.
    cached = train_tiles.main(
        ["--data", str(tiles_like), "--base-model", str(tiny_vision_model), "--budgets", "3,all",
         "--seeds", "0", "--strategies", "head", "--set", "epochs=1", "--name", "cached",
         "--embedding-cache", str(tmp_path / "cache"), "--out", str(tmp_path)]
    )  # fmt: skip
    metrics = ("accuracy", "macro_f1", "missed_defect_rate")
    plain = [[r[k] for k in metrics] for r in rows if r["strategy"] == "head"]
    assert [[r[k] for k in metrics] for r in cached] == plain and any((tmp_path / "cache").iterdir())


def test_adaptation_smoke(tiles_like: Path, tiny_cnn: Path, tmp_path: Path) -> None:
    from benchmarks import adaptation

    rows = adaptation.main(
        [
            "--data", str(tiles_like),
            "--base-model", str(tiny_cnn),
            "--shifts", "exp12->exp56",
            "--seeds", "0",
            "--methods", "bn-adapt;tent:adapt_epochs=1",
            "--target-labels", "0,1",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert json.loads((tmp_path / "adaptation.json").read_text()) == rows and len(rows) == 4
    assert set(rows[0]) == {
        "modality", "shift", "method", "seed", "target_labels", "accuracy_source_only", "accuracy_adapted",
        "accuracy_oracle", "macro_f1_source_only", "macro_f1_adapted", "macro_f1_oracle", "seconds", "gate",
    }  # fmt: skip
    assert [r["method"] for r in rows] == ["bn-adapt", "tent:adapt_epochs=1"] * 2
    assert [r["target_labels"] for r in rows] == [0, 0, 1, 1]
    assert all(r["modality"] == "image" for r in rows)
    assert all(r["gate"] == "promoted" or r["gate"].startswith("refused: ") for r in rows)
    table = (tmp_path / "adaptation.md").read_text()
    assert "| tent:adapt_epochs=1 |" in table and "gate ships" in table


def test_serve_load_image_smoke(tiles_like: Path, image_home_template: Path, tmp_path: Path) -> None:
    import shutil

    from benchmarks import serve_load

    home = tmp_path / "bentoml"
    shutil.copytree(image_home_template, home)
    rows = serve_load.main(
        [
            "--modality", "image",
            "--data", str(tiles_like),
            "--home", str(home),
            "--model", "surfaces",
            "--max-latency-ms", "10000",  # no shedding on a busy machine: a smoke, not a measurement
            "--systems", "refit-onnx,naive",
            "--concurrency", "1,4",
            "--duration", "0.5",
            "--rounds", "1",
            "--limit-batches", "1,4",
            "--limit-texts", "8",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "serve_images.json").read_text())
    assert saved == rows
    keys = {"system", "concurrency", "rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch", "errors", "rss_mb"}
    assert all(set(row) == keys for row in rows)
    assert {row["system"] for row in rows} == {"limit", "refit-onnx", "naive"}
    served = [row for row in rows if row["system"] != "limit"]
    assert all(row["rps"] > 0 and row["errors"] == 0 for row in served)


def test_drift_power_image_smoke(tiles_like: Path, tiny_vision_model: Path, tmp_path: Path) -> None:
    from benchmarks import drift_power

    rows = drift_power.main(
        [
            "--modality", "image",
            "--data", str(tiles_like),
            "--home", str(tmp_path / "home"),
            "--base-model", str(tiny_vision_model),
            "--windows", "10",
            "--scenarios", "none,lighting,blur,defect_rate",
            "--trials", "3", "--none-trials", "3", "--baseline-trials", "1", "--e2e-trials", "1",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "drift_power_images.json").read_text())
    assert saved == rows
    assert {(r["detector"], r["scenario"]) for r in rows} >= {
        ("refit", "lighting"),
        ("evidently-default", "none"),
    }
    assert all(0.0 <= r["rate"] <= 1.0 and r["seconds_per_check"] >= 0 for r in rows)
    assert any("seconds_end_to_end" in r for r in rows)
    assert "magnetic tiles" in (tmp_path / "drift_power_images.md").read_text()


def test_tile_twins_smoke(surfaces: Path, tiny_vision_model: Path, tmp_path: Path) -> None:
    from PIL import Image, ImageEnhance

    from benchmarks import tile_twins, train_tiles
    from training.blobs import BlobStore
    from training.data import stratified_split
    from training.image_data import load_image_dataset

    # Tiles named as the dataset names them: each photo its own tile (numbers far apart), except one
    # `spot` tile whose photo under another light is filed as `free`.
    rows = []
    for i, photo in enumerate(sorted(surfaces.rglob("*.png"))):
        target = tmp_path / "images" / photo.parent.name / f"exp{1 + i % 6}_num_{1000 * (i + 1)}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(photo.read_bytes())
        rows.append({"path": str(target), "label": photo.parent.name, "lighting": f"exp{1 + i % 6}"})
    spot = next(r for r in rows if r["label"] == "spot")
    number = int(Path(spot["path"]).stem.split("_")[-1]) + 5  # the next photo of the same tile
    twin = tmp_path / "images" / "free" / f"{spot['lighting']}b_num_{number}.png"
    with Image.open(spot["path"]) as im:
        ImageEnhance.Brightness(im.convert("RGB")).enhance(1.1).save(twin)
    rows.append({"path": str(twin), "label": "free", "lighting": spot["lighting"] + "b"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)

    train_tiles.main(
        ["--data", str(tmp_path), "--base-model", str(tiny_vision_model), "--budgets", "all",
         "--seeds", "0", "--strategies", "head", "--predictions", str(tmp_path / "answers"),
         "--out", str(tmp_path / "tiles")]
    )  # fmt: skip
    answers = pd.read_csv(tmp_path / "answers" / "train_tiles" / "head-all-seed0.csv")
    assert {"image", "path", "label", "predicted", "confidence"} <= set(answers.columns)

    grouped = tmp_path / "grouped" / "manifest.csv"
    seeds = tile_twins.main(
        ["--data", str(tmp_path), "--base-model", str(tiny_vision_model), "--seeds", "0,1,2",
         "--predictions", str(tmp_path / "answers"), "--write-manifest", str(grouped),
         "--out", str(tmp_path / "twins")]
    )  # fmt: skip
    saved = json.loads((tmp_path / "twins" / "tile_twins.json").read_text())
    assert saved["seeds"] == seeds
    assert [sorted(t["labels"]) for t in saved["conflicting_tiles"]] == [["free", "spot"]]
    frame = load_image_dataset(tmp_path / "manifest.csv", BlobStore(tmp_path / "blobs"))
    for row in seeds:
        _, _, test = stratified_split(frame, (0.0, 0.3), row["seed"])
        spot_in_test, twin_in_test = spot["path"] in set(test["path"]), str(twin) in set(test["path"])
        assert (
            row["with_tile_in_train"]
            == row["tile_labelled_otherwise_in_train"]
            == int(spot_in_test != twin_in_test)
        )
        assert row["defective_tile_free_in_train"] == int(spot_in_test and not twin_in_test)
    missed = answers[(answers["label"] != "free") & (answers["predicted"] == "free")]
    model = seeds[0]["models"]["train_tiles/head-all"]
    assert model["missed"] == len(missed) and model["errors"] == int(
        (answers["label"] != answers["predicted"]).sum()
    )
    assert (tmp_path / "twins" / "tile_twins.png").stat().st_size > 0

    # The written manifest names each photo's tile; --group-column keeps a tile's photos together.
    tiles = pd.read_csv(grouped)
    assert tiles.groupby("tile")["path"].size().max() == 2  # the spot and its twin, nothing else
    for seed in ("0", "1", "2"):
        train_tiles.main(
            ["--data", str(grouped.parent), "--base-model", str(tiny_vision_model), "--budgets", "all",
             "--seeds", seed, "--strategies", "baseline", "--group-column", "tile",
             "--predictions", str(tmp_path / "answers"), "--name", "by_tile",
             "--out", str(tmp_path / "tiles")]
        )  # fmt: skip
        tested = set(pd.read_csv(tmp_path / "answers" / "by_tile" / f"baseline-all-seed{seed}.csv")["path"])
        assert (spot["path"] in tested) == (str(twin) in tested)
    assert (
        "split keeping each `tile` on one side (and validation too)"
        in (tmp_path / "tiles" / "by_tile.md").read_text()
    )
    # The validation split carved from the training tiles keeps them whole too.
    from training.blobs import BlobStore
    from training.data import split_frames
    from training.image_data import load_image_dataset

    pool, test = train_tiles.split_test(load_image_dataset(grouped, BlobStore(tmp_path / "store")), 0, "tile")
    splits = split_frames(pool, test, validation_fraction=0.3, seed=0, column="image", group_column="tile")
    assert len(splits.validation) and not set(splits.train["group"]) & set(splits.validation["group"])
    # Answers on another split than train_tiles' stratified one are not attributed to its test photos.
    again = tile_twins.main(
        ["--data", str(tmp_path), "--base-model", str(tiny_vision_model), "--seeds", "0",
         "--predictions", str(tmp_path / "answers"), "--out", str(tmp_path / "twins")]
    )  # fmt: skip
    assert set(again[0]["models"]) == {"train_tiles/head-all"}
    with pytest.raises(SystemExit, match="not a manifest column"):
        train_tiles.main(["--data", str(grouped.parent), "--group-column", "nope", "--out", str(tmp_path)])
