"""The same tile under another light: how many test tiles of train_tiles' splits have their own
tile among the training tiles, and where the dataset labels two photos of one tile differently.

Run by hand (not in CI), e.g.::

    python -m benchmarks.tile_twins --data ../shared/datasets/magnetic_tiles \\
        --embedding-cache ~/.cache/refit-tiles --predictions runs/tiles-predictions

The magnetic-tile dataset photographs each tile under each lighting set-up; the photos of one
tile are numbered close together (``exp3_num_346347.jpg``, ``exp4_num_346361.jpg``). A stratified
70/30 split of all conditions (``benchmarks/train_tiles.py``) therefore puts most test photos'
tile in the training split too, and where the dataset labels one photo of a tile ``free`` and
another a defect, a model that learns the training labels answers one of them against its label.
Two photos count as the same tile when their numbers are at most ``--number-gap`` apart, their
lighting differs, and the frozen encoder's embeddings (centred, cosine) are at least
``--min-similarity`` alike (photos numbered close together can be crops of other parts), or when
such pairs link them through the photos under the lights between.

Writes ``benchmarks/results/tile_twins.json`` (per seed: test photos, those with their tile in
training, defective test photos whose tile a training photo shows labelled ``free``; with ``--predictions``,
the directory ``train_tiles --predictions`` writes, each model's errors and missed defects and how
many of them fall on such photos; and the tiles whose photos carry more than one label), ``tile_twins.md``
and ``tile_twins.png`` (those defective test photos beside a ``free`` training photo of their tile).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from benchmarks.train_banking77 import describe_environment
from benchmarks.train_tiles import NORMAL_LABEL, RESULTS, embed_images, split_test
from training.blobs import BlobStore
from training.config import TrainingConfig
from training.image_data import load_image_dataset
from training.modality import ImageModality

_NUMBER = re.compile(r"num_(\d+)")
_THUMB = (160, 190)


def find_same_tile(
    images: pd.DataFrame, embeddings: np.ndarray, number_gap: int, min_similarity: float
) -> np.ndarray:
    """Boolean (n, n): which photos show the same tile under another light (the diagonal is False)."""
    numbers = images["path"].map(lambda p: _capture_number(str(p))).to_numpy(dtype=float)
    centred = embeddings - embeddings.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True).clip(1e-12)
    similar = centred @ centred.T >= min_similarity
    close = np.abs(numbers[:, None] - numbers[None, :]) <= number_gap  # NaN (no number) is never close
    lighting = images["meta_lighting"].to_numpy(dtype=str)
    same = similar & close & (lighting[:, None] != lighting[None, :])
    np.fill_diagonal(same, False)
    return same


def _capture_number(path: str) -> float:
    found = _NUMBER.search(Path(path).name)
    return float(found[1]) if found else float("nan")


def group_tiles(same: np.ndarray) -> np.ndarray:
    """The tile of each photo (n,): photos linked by ``same``, directly or through others, share one.

    Photos of one tile under far-apart lights can look less alike than the threshold; the lights
    between link them."""
    return np.asarray(connected_components(csr_matrix(same), directed=False)[1])


def list_conflicting_tiles(images: pd.DataFrame, group: np.ndarray) -> list[dict[str, Any]]:
    """The tiles whose photos carry more than one label."""
    tiles = []
    for g in np.unique(group):
        members = images.iloc[np.flatnonzero(group == g)]
        if members["label"].nunique() > 1:
            tiles.append(
                {
                    "photos": [Path(p).name for p in members["path"]],
                    "labels": members["label"].tolist(),
                    "lighting": members["meta_lighting"].tolist(),
                }
            )
    return tiles


def count_seed(
    images: pd.DataFrame, group: np.ndarray, seed: int, predictions: Path | None
) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """One seed's row, and the (defective test photo, free training photo of its tile) pairs."""
    position = pd.Series(np.arange(len(images)), index=images["image"])
    pool, test = split_test(images, seed)
    train_at = position[pool["image"]].to_numpy()
    test_at = position[test["image"]].to_numpy()
    labels = images["label"].to_numpy(dtype=str)
    twins = group[test_at][:, None] == group[train_at][None, :]
    defective = labels[test_at] != NORMAL_LABEL
    twin_labels = [set(labels[train_at[row]]) for row in twins]
    # A test photo whose tile a training photo (under another light) labels otherwise; of those, a
    # defective one whose tile a training photo calls free.
    otherwise = np.array([bool(s - {label}) for label, s in zip(labels[test_at], twin_labels, strict=True)])
    free_twin = np.array([d and NORMAL_LABEL in s for d, s in zip(defective, twin_labels, strict=True)])
    free_train = labels[train_at] == NORMAL_LABEL
    pairs = [
        (int(test_at[i]), int(train_at[np.flatnonzero(twins[i] & free_train)[0]]))
        for i in np.flatnonzero(free_twin)
    ]
    row: dict[str, Any] = {
        "seed": seed,
        "test_images": len(test_at),
        "with_tile_in_train": int(twins.any(axis=1).sum()),
        "tile_labelled_otherwise_in_train": int(otherwise.sum()),
        "defective": int(defective.sum()),
        "defective_tile_free_in_train": int(free_twin.sum()),
        "models": {},
    }
    if predictions is not None:
        keys = images["image"].to_numpy()
        conflicting, free_defects = set(keys[test_at[otherwise]]), set(keys[test_at[free_twin]])
        tested = set(keys[test_at])
        for path in sorted(predictions.glob(f"**/*-seed{seed}.csv")):
            answers = pd.read_csv(path)
            if not set(answers["image"]) <= tested:  # answers on another split (--group-column)
                continue
            wrong = answers[answers["label"] != answers["predicted"]]
            missed = wrong[(wrong["label"] != NORMAL_LABEL) & (wrong["predicted"] == NORMAL_LABEL)]
            model = path.relative_to(predictions).with_name(path.stem.removesuffix(f"-seed{seed}"))
            row["models"][model.as_posix()] = {
                "errors": len(wrong),
                "errors_tile_labelled_otherwise_in_train": int(wrong["image"].isin(conflicting).sum()),
                "missed": len(missed),
                "missed_tile_free_in_train": int(missed["image"].isin(free_defects).sum()),
            }
    return row, pairs


def render_markdown(rows: list[dict[str, Any]], tiles: list[dict[str, Any]], settings: str) -> str:
    """The per-seed table, each model's errors and misses, and the conflicting tiles."""
    env = describe_environment()
    lines = [
        "# Magnetic tiles: test photos whose tile is in the training split (train_tiles' 70/30 splits)",
        "",
        f"{env['when']}. Same tile: {settings}. Labelled otherwise: test photos whose tile a training "
        f"photo (another light) labels otherwise; tile `{NORMAL_LABEL}` in train: defective test photos "
        f"whose tile a training photo labels `{NORMAL_LABEL}`.",
        "",
        "| seed | test photos | tile in train | labelled otherwise | defective | defective, tile "
        f"`{NORMAL_LABEL}` in train |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['test_images']} | {r['with_tile_in_train']} "
            f"| {r['tile_labelled_otherwise_in_train']} | {r['defective']} "
            f"| {r['defective_tile_free_in_train']} |"
        )
    models = sorted({m for r in rows for m in r["models"]})
    if models:
        lines += [
            "",
            "| model | seed | errors | of them, labelled otherwise | missed defects | of them, tile "
            f"`{NORMAL_LABEL}` in train |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for m in models:
            for r in rows:
                if m in r["models"]:
                    got = r["models"][m]
                    lines.append(
                        f"| {m} | {r['seed']} | {got['errors']} | "
                        f"{got['errors_tile_labelled_otherwise_in_train']} | {got['missed']} "
                        f"| {got['missed_tile_free_in_train']} |"
                    )
    lines += ["", f"Tiles whose photos carry more than one label: {len(tiles)}", ""]
    lines += [
        f"- {', '.join(f'{p} ({lab})' for p, lab in zip(t['photos'], t['labels'], strict=True))}"
        for t in tiles
    ]
    return "\n".join(lines) + "\n"


def draw_pairs(images: pd.DataFrame, pairs: list[tuple[int, int]], path: Path) -> None:
    """Each defective test photo beside its tile's free training photo, file and label above each."""
    first: dict[int, int] = {}
    for test, twin in pairs:  # a photo is in several seeds' test splits: show it once
        first.setdefault(test, twin)
    pairs = list(first.items())
    width, height = _THUMB
    sheet = Image.new("RGB", (2 * width * 2, (height + 14) * max(1, (len(pairs) + 1) // 2)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, pair in enumerate(pairs):
        x0, y0 = (k % 2) * 2 * width, (k // 2) * (height + 14)
        for j, at in enumerate(pair):
            photo = images.iloc[at]
            with Image.open(photo["path"]) as im:
                sheet.paste(im.convert("RGB").resize((width - 4, height)), (x0 + j * width, y0 + 14))
            draw.text((x0 + j * width, y0), f"{photo['label']} {Path(photo['path']).stem}"[:26], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/magnetic_tiles"))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (train_tiles' splits)")
    parser.add_argument("--base-model", default="efficientnet-lite0", help="the encoder that compares photos")
    parser.add_argument(
        "--number-gap", type=int, default=150, help="most apart two photos of a tile are numbered"
    )
    parser.add_argument(
        "--min-similarity", type=float, default=0.5, help="least centred cosine of a tile's photos"
    )
    parser.add_argument("--embedding-cache", type=Path, default=None, help="as train_tiles' (shared with it)")
    parser.add_argument("--predictions", type=Path, default=None, help="what train_tiles --predictions wrote")
    parser.add_argument(
        "--write-manifest",
        type=Path,
        default=None,
        help="also write the manifest with a `tile` column (train_tiles --group-column tile)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="tile_twins", help="results file stem")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Count, write JSON, markdown and the picture, return the per-seed rows."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="refit-twins-") as scratch:
        store = BlobStore(Path(scratch) / "blobs")
        images = load_image_dataset(args.data / "manifest.csv", store)
        modality = ImageModality(TrainingConfig(modality="image"), store)
        cache = args.embedding_cache or Path(scratch) / "cache"
        by_key = embed_images(images, modality, {"base_model": args.base_model}, cache)
    embeddings = np.stack([by_key[k] for k in images["image"]])
    same = find_same_tile(images, embeddings, args.number_gap, args.min_similarity)
    group = group_tiles(same)
    tiles = list_conflicting_tiles(images, group)
    if args.write_manifest:
        manifest = images[["path", "label", "meta_lighting"]].rename(columns={"meta_lighting": "lighting"})
        args.write_manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.assign(tile=group).to_csv(args.write_manifest, index=False)
    rows, pairs = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        row, found = count_seed(images, group, seed, args.predictions)
        rows.append(row)
        pairs += found
    settings = (
        f"file numbers at most {args.number_gap} apart, another lighting, {args.base_model} embeddings "
        f"at least {args.min_similarity} alike (centred cosine)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"settings": settings, "seeds": rows, "conflicting_tiles": tiles}
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(render_markdown(rows, tiles, settings))
    draw_pairs(images, pairs, args.out / f"{args.name}.png")
    return rows


if __name__ == "__main__":
    main()
