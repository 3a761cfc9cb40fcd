"""Domain adaptation without target labels: how much of the source-only -> oracle gap each method closes.

Run by hand (not in CI), e.g.::

    python -m benchmarks.adaptation --data ../shared/datasets/magnetic_tiles

Images: the magnetic tiles, trained on dark lighting conditions and deployed on bright ones
(shifts ``exp1->exp6`` and ``exp12->exp56``). Per seed, the target images are split in half
(stratified): one half is the unlabelled adaptation set, the other the evaluation set of every
model of that seed. Source-only = the base strategy on the source images; oracle = the same
strategy on the source plus the labelled adaptation half; each method adapts the source-only
model to the unlabelled half (``training/adaptation.py``, the code `refit train --strategy ...`
runs). Validation rows (early stopping, the probe's C, calibration) come from the source only.

Writes ``benchmarks/results/adaptation.json`` (rows: modality, shift, method, seed, target_labels,
accuracy_source_only, accuracy_adapted, accuracy_oracle, macro_f1_source_only, macro_f1_adapted,
macro_f1_oracle, seconds) and ``adaptation.md`` (medians over seeds, and the share of the
macro-F1 gap each method recovers). ``seconds`` is the method's own cost (the adaptation, not
the base training it starts from). A method is ``strategy`` or ``strategy:KEY=VALUE,...`` (a
config override, e.g. ``bn-adapt:bn_layers=all`` is plain AdaBN).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks.train_banking77 import describe_environment
from training.adaptation import adapt_model
from training.blobs import BlobStore
from training.cli import parse_assignments
from training.config import TrainingConfig
from training.context import StrategyResult, TrainContext
from training.data import split_frames, stratified_split
from training.image_data import load_image_dataset
from training.modality import ImageModality
from training.model import quiet_transformers
from training.strategies import evaluate_split, run_strategy

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_SHIFTS = {"exp1->exp6": (("exp1",), ("exp6",)), "exp12->exp56": (("exp1", "exp2"), ("exp5", "exp6"))}
METHODS = ("bn-adapt", "bn-adapt:bn_mix=0.5", "bn-adapt:bn_layers=all", "tent", "self-train")


def parse_method(method: str) -> tuple[str, dict[str, Any]]:
    """``bn-adapt:bn_layers=all,bn_mix=0.5`` -> (``bn-adapt``, overrides)."""
    strategy, _, spec = method.partition(":")
    return strategy, parse_assignments([item for item in spec.split(",") if item])


def image_cells(
    images: pd.DataFrame, shift: str, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The source images, the target's unlabelled (adaptation) half and its evaluation half."""
    source_lights, target_lights = IMAGE_SHIFTS[shift]
    source = images[images["meta_lighting"].isin(source_lights)].reset_index(drop=True)
    target = images[images["meta_lighting"].isin(target_lights)].reset_index(drop=True)
    adaptation, _, evaluation = stratified_split(target, (0.0, 0.5), seed)
    return source, adaptation.reset_index(drop=True), evaluation.reset_index(drop=True)


def train_base(
    data: pd.DataFrame, evaluation: pd.DataFrame, modality: ImageModality, config: TrainingConfig
) -> tuple[TrainContext, StrategyResult]:
    """The base strategy on ``data`` (validation carved from it), scored on ``evaluation``."""
    splits = split_frames(data, evaluation, validation_fraction=0.1, seed=config.seed, source="source",
                          column="image")  # fmt: skip
    modality.config = config
    torch.manual_seed(config.seed)
    ctx = TrainContext.create(config, splits, modality)
    return ctx, run_strategy(config.adapt_base, ctx)


def score(result: StrategyResult, ctx: TrainContext) -> tuple[float, float]:
    """Accuracy and macro-F1 on the evaluation half, after the refit (a copy: the result stays)."""
    final = copy.deepcopy(result)
    final.finalize()
    metrics = evaluate_split(final, ctx, "test")
    return round(metrics.accuracy, 4), round(metrics.macro_f1, 4)


def run_seed(
    images: pd.DataFrame,
    modality: ImageModality,
    shift: str,
    seed: int,
    methods: list[str],
    base: str,
    scratch: Path,
    base_model: str | None = None,
) -> list[dict[str, Any]]:
    """Source-only, oracle and every method for one shift and seed."""
    source, adaptation, evaluation = image_cells(images, shift, seed)
    target_file = scratch / f"target-{shift.replace('>', '')}-{seed}.csv"
    pd.DataFrame({"path": modality.inputs(adaptation)}).to_csv(target_file, index=False)
    config = TrainingConfig(name="tiles", modality="image", seed=seed, adapt_base=base, base_model=base_model)
    ctx, source_only = train_base(source, evaluation, modality, config)
    oracle_ctx, oracle = train_base(pd.concat([source, adaptation], ignore_index=True), evaluation, modality,
                                    config)  # fmt: skip
    accuracy_source, f1_source = score(source_only, ctx)
    accuracy_oracle, f1_oracle = score(oracle, oracle_ctx)
    rows = []
    for method in methods:
        strategy, overrides = parse_method(method)
        ctx.config = TrainingConfig.model_validate(
            {**config.model_dump(), "strategy": strategy, "target_file": target_file, **overrides}
        )
        start = time.perf_counter()
        adapted = adapt_model(strategy, ctx, copy.deepcopy(source_only), run_strategy)
        seconds = time.perf_counter() - start
        accuracy, f1 = score(adapted, ctx)
        rows.append(
            {
                "modality": "image",
                "shift": shift,
                "method": method,
                "seed": seed,
                "target_labels": 0,
                "accuracy_source_only": accuracy_source,
                "accuracy_adapted": accuracy,
                "accuracy_oracle": accuracy_oracle,
                "macro_f1_source_only": f1_source,
                "macro_f1_adapted": f1,
                "macro_f1_oracle": f1_oracle,
                "seconds": round(seconds, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def recovered(row: dict[str, Any]) -> float | None:
    """The share of the source-only -> oracle macro-F1 gap the adapted model closes."""
    gap = row["macro_f1_oracle"] - row["macro_f1_source_only"]
    return None if gap <= 0 else (row["macro_f1_adapted"] - row["macro_f1_source_only"]) / gap


def render_markdown(rows: list[dict[str, Any]], env: dict[str, Any], sizes: dict[str, str]) -> str:
    """Medians over seeds per modality, shift, method and label budget."""
    lines = [
        "# Domain adaptation: source-only vs adapted vs oracle (medians over seeds)",
        "",
        f"Device: {env['device']}; torch {env['torch']}; {env['when']}. Evaluation sets: "
        + "; ".join(f"{shift}: {size}" for shift, size in sizes.items())
        + ". Recovered: (adapted - source-only) / (oracle - source-only) in macro-F1; seconds: the "
        "method's own cost on this machine.",
        "",
        "| modality | shift | method | target labels | seeds | macro-F1 source-only | adapted | oracle "
        "| recovered | accuracy source-only | adapted | oracle | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["modality"], r["shift"], r["method"], r["target_labels"]) for r in rows}, key=str)
    for key in keys:
        cell = [r for r in rows if (r["modality"], r["shift"], r["method"], r["target_labels"]) == key]
        scored = [k for k in cell[0] if k.startswith(("accuracy", "macro"))]
        med = {k: statistics.median(r[k] for r in cell) for k in scored}
        shares = [s for s in (recovered(r) for r in cell) if s is not None]
        share = f"{statistics.median(shares):.2f}" if shares else "n/a"
        seconds = statistics.median(r["seconds"] for r in cell)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {len(cell)} | {med['macro_f1_source_only']:.4f} "
            f"| {med['macro_f1_adapted']:.4f} | {med['macro_f1_oracle']:.4f} | {share} "
            f"| {med['accuracy_source_only']:.4f} | {med['accuracy_adapted']:.4f} "
            f"| {med['accuracy_oracle']:.4f} | {seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/magnetic_tiles"))
    parser.add_argument("--shifts", default=",".join(IMAGE_SHIFTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--methods", default=";".join(METHODS), help="semicolon-separated: strategy or strategy:KEY=VALUE,..."
    )
    parser.add_argument("--base", default="head", help="the strategy trained on the source")
    parser.add_argument("--base-model", default=None, help="default: EfficientNet-Lite0")
    parser.add_argument("--max-images", type=int, default=None, help="the first N images per class (smoke)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="adaptation", help="results file stem")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every shift, seed and method; write JSON and markdown after each seed."""
    logging.basicConfig(level=logging.WARNING)
    quiet_transformers()
    args = parse_args(argv)
    methods = [m for m in args.methods.split(";") if m]
    rows: list[dict[str, Any]] = []
    sizes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="refit-adaptation-") as scratch:
        store = BlobStore(Path(scratch) / "images")
        images = load_image_dataset(args.data / "manifest.csv", store)
        if args.max_images:
            images = images.groupby(["label", "meta_lighting"], sort=True).head(args.max_images)
            images = images.reset_index(drop=True)
        modality = ImageModality(TrainingConfig(modality="image"), store)
        for shift in args.shifts.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                sizes[shift] = f"{len(image_cells(images, shift, seed)[2])} images (half of the target)"
                rows += run_seed(
                    images, modality, shift, seed, methods, args.base, Path(scratch), args.base_model
                )
                write_results(rows, args.out, args.name, sizes)
    return rows


def write_results(rows: list[dict[str, Any]], out: Path, name: str, sizes: dict[str, str]) -> None:
    """The JSON rows and the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / f"{name}.md").write_text(render_markdown(rows, describe_environment(), sizes))


if __name__ == "__main__":
    main()
