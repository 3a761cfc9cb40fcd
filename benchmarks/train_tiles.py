"""Every training strategy on the magnetic-tile defect images: 20 training images per class, and all.

Run by hand (not in CI), e.g.::

    python -m benchmarks.train_tiles --data ../shared/datasets/magnetic_tiles

Each seed draws a stratified 70/30 split of all lighting conditions; the 30% is the test set of
every strategy and budget of that seed, and validation (early stopping, calibration, the probe's
C) comes out of the 70% only. ``per_class`` "20" trains on 20 images per class of the 70%.

Writes ``benchmarks/results/train_tiles.json`` (one row per strategy, budget and seed: strategy,
base_model, per_class, seed, accuracy, macro_f1, missed_defect_rate, train_seconds, peak_rss_mb,
trainable_params) and ``train_tiles.md`` (medians over seeds). With ``--set
max_missed_defect_rate=0.02`` each model gets the inspection operating point `refit train` gives it
(``training/operating_point.py``); write such runs, and others with a setting of their own (e.g.
``--set orientations=8 --name train_tiles_orientations``), under their own ``--name``. ``--dev`` chooses
settings without the test images: each seed's 70% is split 70/30 again and that 30% is the test.
``--group-column tile`` keeps each tile's photos on one side of the test split and of the
validation split, as ``refit train --set group_column=tile`` does (the manifest that
``benchmarks.tile_twins --write-manifest`` writes has that column); ``--predictions DIR`` keeps each
model's answer for every test image, which ``benchmarks.tile_twins`` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.train_banking77 import PeakRss, describe_environment, sample_per_class
from training.blobs import BlobStore
from training.cli import parse_assignments
from training.config import TrainingConfig
from training.console import quiet_transformers
from training.context import TrainContext
from training.data import DatasetSplits, split_frames, stratified_split
from training.errors import DataError
from training.evaluation import evaluate_predictions
from training.groups import GROUP, stratified_group_folds
from training.image_data import attach_image_groups, load_image_dataset
from training.inference import Predictions
from training.modality import ImageModality
from training.operating_point import apply_operating_point, choose_configured_operating_point
from training.strategies import run_strategy

STRATEGIES = ("baseline", "head", "partial", "lora", "full")
RESULTS = Path(__file__).resolve().parent / "results"
NORMAL_LABEL = "free"  # the tiles' no-defect class


def run_cell(
    images: pd.DataFrame,
    modality: ImageModality,
    per_class: str,
    seed: int,
    strategy: str,
    overrides: dict[str, Any],
    frozen: dict[str, np.ndarray] | None = None,
    predictions: Path | None = None,
    group_column: str | None = None,
) -> dict[str, Any]:
    """Train one strategy on one budget and seed; return its result row.

    ``frozen``: the pretrained encoder's embedding of every image by its key, computed once for
    every cell instead of once per cell (:func:`embed_images`). ``predictions``: a directory to
    write the model's answer for each test image to (:func:`write_predictions`). ``group_column``:
    see :func:`split_test`.
    """
    pool, test = split_test(images, seed, group_column)
    data = sample_per_class(pool, per_class if per_class == "all" else int(per_class), seed)
    # As `refit train` does: cross-validation carves no validation split.
    validation = 0.0 if overrides.get("selection") == "cv" else 0.1
    splits = split_frames(
        data.reset_index(drop=True),
        test,
        validation_fraction=validation,
        seed=seed,
        source="tiles",
        column="image",
        group_column=group_column,
    )
    config = TrainingConfig(
        name="tiles", strategy=strategy, seed=seed, modality="image", normal_label=NORMAL_LABEL, **overrides
    )
    modality.config = config
    torch.manual_seed(seed)
    ctx = TrainContext.create(config, splits, modality)
    if frozen is not None:
        width = next(iter(frozen.values())).shape
        for split in ("train", "validation"):
            keys = getattr(splits, split)["image"]
            ctx.frozen[split] = np.stack([frozen[k] for k in keys]) if len(keys) else np.zeros((0, *width))
    with PeakRss() as rss:
        start = time.perf_counter()
        result = run_strategy(strategy, ctx)
        # As `refit train` does: the operating point (if configured) on the selected model's
        # validation predictions, then the refit, then the shift.
        held_out = ctx.predict(result.model, "validation") if len(splits.validation) else None
        point = choose_configured_operating_point(ctx, held_out, result)
        result.finalize()
        apply_operating_point(result, ctx, point)
        seconds = time.perf_counter() - start
    answers = ctx.predict(result.model, "test")
    metrics = evaluate_predictions(
        ctx.label_ids("test"), answers.probabilities, splits.labels, config.normal_label
    )
    if predictions is not None:
        write_predictions(predictions / f"{strategy}-{per_class}-seed{seed}.csv", splits, answers)
    return {
        "strategy": strategy,
        "base_model": ctx.base_model,
        "per_class": per_class,
        "seed": seed,
        "accuracy": round(metrics.accuracy, 4),
        "macro_f1": round(metrics.macro_f1, 4),
        "missed_defect_rate": round(float(metrics.missed_defect_rate or 0.0), 4),
        "train_seconds": round(seconds, 1),
        "peak_rss_mb": rss.peak_mb,
        "trainable_params": result.trainable_params,
    }


def split_test(
    images: pd.DataFrame, seed: int, group_column: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The seed's 70% pool and 30% test set, stratified by label.

    With ``group_column`` (a manifest column, e.g. which tile a photo shows) the photos of one group
    stay on one side: 3 of 10 stratified group folds are the test set, and both parts carry the
    ``group`` column, so that the validation split carved from the pool keeps the groups too.
    """
    if group_column is None:
        pool, _, test = stratified_split(images, (0.0, 0.3), seed)
        return pool, test
    try:  # the `group` column: the validation split carved from the pool takes whole groups too
        images = attach_image_groups(images, group_column, "the manifest", required=True)
    except DataError as exc:
        raise SystemExit(f"--group-column {group_column!r} is not a manifest column: {exc}") from exc
    folds = stratified_group_folds(images["label"].to_numpy(), images[GROUP].to_numpy(), 10, seed)
    in_test = np.zeros(len(images), dtype=bool)
    for _, test in folds[:3]:
        in_test[test] = True
    return images[~in_test].reset_index(drop=True), images[in_test].reset_index(drop=True)


def write_predictions(path: Path, splits: DatasetSplits, answers: Predictions) -> None:
    """One CSV row per test image: its key, file, label, and the label the model answered."""
    test = splits.test
    frame = test[[c for c in ("image", "path", "label") if c in test.columns]].copy()
    frame["predicted"] = [splits.labels[i] for i in answers.predicted]
    frame["confidence"] = answers.probabilities.max(axis=1).round(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def embed_images(
    images: pd.DataFrame, modality: ImageModality, overrides: dict[str, Any], cache: Path
) -> dict[str, np.ndarray]:
    """The pretrained encoder's embedding of every image by key, as ``TrainContext`` computes them.

    Read from ``cache`` (a directory) when an earlier run with the same encoder settings wrote it.
    """
    config = TrainingConfig(
        name="tiles", strategy="head", modality="image", normal_label=NORMAL_LABEL, **overrides
    )
    settings = f"{config.base_model}-{config.image_size}-{config.orientations}-{config.normalize_embeddings}"
    path = cache / f"{settings.replace('/', '_')}.npz"
    if not path.is_file():
        modality.config = config
        splits = split_frames(
            images, validation_fraction=0.0, test_fraction=0.0, source="tiles", column="image"
        )
        ctx = TrainContext.create(config, splits, modality)
        embeddings = ctx.frozen_embeddings("train")
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, keys=splits.train["image"].to_numpy(dtype=str), embeddings=embeddings)
    saved = np.load(path)
    return dict(zip(saved["keys"].tolist(), saved["embeddings"], strict=True))


def render_markdown(
    rows: list[dict[str, Any]], env: dict[str, Any], test_rows: int, settings: dict[str, Any] | None = None
) -> str:
    """Medians over seeds, one line per strategy and budget; ``settings``: the run's ``--set`` values."""
    named = ", ".join(f"`{k}={v}`" for k, v in (settings or {}).items())
    group = (settings or {}).get("group_column")
    split = (
        f"split keeping each `{group}` on one side (and validation too), about"
        if group
        else "stratified split,"
    )
    lines = [
        f"# Magnetic tiles: strategies x budgets (test: 30% {split} {test_rows} images per "
        "seed; medians over seeds)",
        "",
        f"Device: {env['device']}; torch {env['torch']}; {env['when']}. Missed-defect rate: defective "
        f"test images predicted as `{NORMAL_LABEL}`." + (f" Settings: {named}." if named else ""),
        "",
        "| strategy | base model | per class | seeds | accuracy | macro-F1 | missed defects | train s "
        "| peak RSS MB | trainable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted(
        {(r["per_class"], r["base_model"], r["strategy"]) for r in rows},
        key=lambda k: (k[0], k[1], STRATEGIES.index(k[2])),
    )
    for per_class, base_model, strategy in keys:
        cell = [
            r
            for r in rows
            if (r["per_class"], r["base_model"], r["strategy"]) == (per_class, base_model, strategy)
        ]
        med = {
            k: statistics.median(r[k] for r in cell)
            for k in ("accuracy", "macro_f1", "missed_defect_rate", "train_seconds", "peak_rss_mb")
        }
        lines.append(
            f"| {strategy} | {base_model} | {per_class} | {len(cell)} | {med['accuracy']:.4f} "
            f"| {med['macro_f1']:.4f} | {med['missed_defect_rate']:.4f} | {med['train_seconds']:.1f} "
            f"| {med['peak_rss_mb']:.0f} | {cell[0]['trainable_params']:,} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/magnetic_tiles"))
    parser.add_argument("--budgets", default="20,all", help="comma-separated: integers or 'all'")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--base-model", default="efficientnet-lite0")
    parser.add_argument("--max-images", type=int, default=None, help="the first N images per class (smoke)")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="train_tiles", help="results file stem")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="choose settings without the test set: run on each seed's 70%% only, its own 30%% as test",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep an earlier run's rows that this run does not redo"
    )
    parser.add_argument(
        "--embedding-cache",
        type=Path,
        default=None,
        help="embed every image with the frozen encoder once, kept in this directory for later runs "
        "(train s then leaves that embedding out)",
    )
    parser.add_argument(
        "--group-column",
        default=None,
        help="a manifest column whose groups (e.g. photos of one tile) stay on one side of the 70/30 "
        "split (benchmarks.tile_twins --write-manifest writes one)",
    )
    parser.add_argument(
        "--predictions",
        type=Path,
        default=None,
        help="write each model's answer for every test image under this directory (a folder a "
        "--name, a CSV a cell; read by benchmarks.tile_twins)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the grid, write JSON and markdown after every row, return the rows."""
    logging.basicConfig(level=logging.WARNING)
    quiet_transformers()
    args = parse_args(argv)
    settings = parse_assignments(args.set)
    overrides: dict[str, Any] = {"base_model": args.base_model, **settings}
    rows: list[dict[str, Any]] = []
    earlier = read_earlier(args.out / f"{args.name}.json") if args.merge else []
    with tempfile.TemporaryDirectory(prefix="refit-tiles-") as scratch:
        store = BlobStore(Path(scratch))
        images = load_image_dataset(args.data / "manifest.csv", store)
        if args.max_images:
            images = images.groupby("label", sort=True).head(args.max_images).reset_index(drop=True)
        modality = ImageModality(TrainingConfig(modality="image"), store)
        test_rows = 0
        frozen = (
            embed_images(images, modality, overrides, args.embedding_cache) if args.embedding_cache else None
        )
        if frozen is not None:
            settings = {**settings, "frozen embeddings": "cached"}
        if args.group_column:
            settings = {**settings, "group_column": args.group_column}
        predictions = args.predictions / args.name if args.predictions else None  # a folder a run
        for seed in (int(s) for s in args.seeds.split(",")):
            # --dev: the seed's real test images stay unseen while settings are chosen
            seen = split_test(images, seed, args.group_column)[0] if args.dev else images
            for per_class in args.budgets.split(","):
                for strategy in args.strategies.split(","):
                    row = run_cell(
                        seen,
                        modality,
                        per_class,
                        seed,
                        strategy,
                        overrides,
                        frozen,
                        predictions,
                        args.group_column,
                    )
                    test_rows = len(split_test(seen, seed, args.group_column)[1])
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    write_results(merge_rows(earlier, rows), args.out, args.name, test_rows, settings)
    return rows


def read_earlier(path: Path) -> list[dict[str, Any]]:
    """The rows of an earlier run, if there is one."""
    return list(json.loads(path.read_text())) if path.is_file() else []


def merge_rows(earlier: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier rows with this run's cells (strategy, base model, budget, seed) replaced or added."""
    key = lambda r: (r["strategy"], r["base_model"], r["per_class"], r["seed"])  # noqa: E731
    return list(({key(r): r for r in earlier} | {key(r): r for r in new}).values())


def write_results(
    rows: list[dict[str, Any]], out: Path, name: str, test_rows: int, settings: dict[str, Any] | None = None
) -> None:
    """Write the JSON rows and the markdown table (after every row, so a cut-off run keeps its rows)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / f"{name}.md").write_text(render_markdown(rows, describe_environment(), test_rows, settings))


if __name__ == "__main__":
    main()
