"""The image side of the drift benchmark: a tile model trained on lighting exp1-exp3, and windows.

    python -m benchmarks.drift_power --modality image --data ../shared/datasets/magnetic_tiles

Scenarios (``IMAGE_SCENARIOS``), each window drawn with the training label mix unless it says:

    none         exp1-exp3 images the model never saw
    lighting     exp5-exp6 images: the real lighting change of the production line
    darken       unseen exp1-exp3 images 15% darker (mild, synthetic)
    blur         unseen exp1-exp3 images under a Gaussian blur of radius 1 px (a dirty lens)
    noise        unseen exp1-exp3 images with Gaussian pixel noise, sigma 8 grey levels
    defect_rate  unseen exp1-exp3 images with the share of defective tiles tripled

Every image of every scenario is embedded and described once; a window is a resample. The model
is exported to ONNX first, as the service does when it loads it, so that the end-to-end timing
embeds a window's images the way `refit drift` does in production.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter
from rich.console import Console

from monitoring.reference import Reference, load_reference
from training.config import TrainingConfig
from training.data import stratified_split
from training.images import IMAGE_DESCRIPTORS, decode_image, describe_image
from training.onnx_export import export_version
from training.onnx_files import read_export_record
from training.pipeline import train_model
from training.probabilities import softmax
from training.registry import ModelRegistry

IMAGE_SCENARIOS = ("none", "lighting", "darken", "blur", "noise", "defect_rate")
TRAINED_LIGHTING = ("exp1", "exp2", "exp3")
SHIFTED_LIGHTING = ("exp5", "exp6")
NORMAL_LABEL = "free"
MODEL = "tiles123"
console = Console()


def alter(data: bytes, scenario: str, rng: np.random.Generator) -> bytes:
    """The image re-encoded (PNG) under a synthetic scenario: darker, blurred or noisier."""
    image = decode_image(data, "tile")
    if scenario == "darken":
        image = ImageEnhance.Brightness(image).enhance(0.85)
    elif scenario == "blur":
        image = image.filter(ImageFilter.GaussianBlur(1.0))
    elif scenario == "noise":
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(
            0.0, 8.0, size=(image.height, image.width, 3)
        )
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def prepare_images(args: argparse.Namespace) -> tuple[Reference, dict[str, Any]]:
    """Train (or reuse) the exp1-exp3 model; embed and describe every scenario's images once."""
    manifest = pd.read_csv(args.data / "manifest.csv")
    manifest["path"] = [str((args.data / p).resolve()) for p in manifest["path"]]
    trained = manifest[manifest["lighting"].isin(TRAINED_LIGHTING)].reset_index(drop=True)
    fit, _, unseen = stratified_split(trained, (0.0, 0.4), seed=args.seed)  # 40% never trained on
    registry = ModelRegistry(args.home)
    if not registry.versions(MODEL):
        data = args.home / f"{MODEL}-train.csv"
        data.parent.mkdir(parents=True, exist_ok=True)
        fit[["path", "label", "lighting"]].to_csv(data, index=False)
        config = TrainingConfig(
            name=MODEL, strategy="head", base_model=args.base_model, seed=args.seed, normal_label=NORMAL_LABEL
        )
        train_model(data, config, registry=registry, console=console)
    version = registry.get(f"{MODEL}:production")
    if read_export_record(version) is None:
        export_version(version)  # as the service does on first load: the check then embeds with ONNX
    reference = load_reference(version)
    shifted = manifest[manifest["lighting"].isin(SHIFTED_LIGHTING)].reset_index(drop=True)
    rng = np.random.default_rng(args.seed)
    originals = [Path(p).read_bytes() for p in unseen["path"]]
    sources: dict[str, tuple[pd.DataFrame, list[bytes]]] = {
        "clean": (unseen, originals),
        "lighting": (shifted, [Path(p).read_bytes() for p in shifted["path"]]),
    }
    for scenario in ("darken", "blur", "noise"):
        sources[scenario] = (unseen, [alter(data, scenario, rng) for data in originals])
    pool: dict[str, Any] = {}
    for name, (frame, images) in sources.items():
        with console.status(f"embedding {len(images):,} {name} images"):
            logits, embeddings = reference.encoder.outputs(list(images))
        described = pd.DataFrame([describe_image(decode_image(data, name)) for data in images])
        pool[name] = {
            "inputs": images,
            "labels": frame["label"].to_numpy(),
            "probabilities": softmax(logits),
            "embeddings": embeddings,
            "descriptors": described[list(IMAGE_DESCRIPTORS)],
        }
    pool["mix"] = fit["label"]
    pool["weights"] = label_mix_weights(fit["label"], pool["clean"]["labels"])
    defective = pool["clean"]["labels"] != NORMAL_LABEL
    base = float((pool["weights"] * defective).sum())
    target = min(0.95, 3 * base)  # the share of defective tiles, tripled
    tripled = np.where(
        defective, pool["weights"] * target / base, pool["weights"] * (1 - target) / (1 - base)
    )
    pool["defect_weights"] = tripled / tripled.sum()
    return reference, pool


def label_mix_weights(training_labels: pd.Series, labels: np.ndarray) -> np.ndarray:
    """Row weights that draw ``labels`` with the training label mix."""
    mix = training_labels.value_counts(normalize=True)
    counts = pd.Series(labels).value_counts()
    weights = np.array([mix.get(label, 0.0) / counts[label] for label in labels])
    return weights / weights.sum()


def sample_image_window(
    scenario: str, size: int, pool: dict[str, Any], rng: np.random.Generator
) -> tuple[str, np.ndarray]:
    """(which image set, distinct row indices) of one window.

    A window larger than half its pool is drawn with replacement and then holds each image once,
    as Refit's check counts it: the same image twice is not a second observation.
    """
    if scenario == "lighting":
        n = len(pool["lighting"]["inputs"])
        shifted_mix = label_mix_weights(pool["mix"], pool["lighting"]["labels"])
        return "lighting", np.unique(rng.choice(n, size=size, replace=size > n // 2, p=shifted_mix))
    weights = pool["defect_weights"] if scenario == "defect_rate" else pool["weights"]
    source = scenario if scenario in ("darken", "blur", "noise") else "clean"
    n = len(weights)
    return source, np.unique(rng.choice(n, size=size, replace=size > n // 2, p=weights))


def image_window_features(
    reference: Reference, pool: dict[str, Any], source: str, idx: np.ndarray
) -> tuple[pd.DataFrame, list[Any], np.ndarray, pd.DataFrame]:
    """Features, inputs, probabilities and descriptor rows of a window."""
    part = pool[source]
    rows = part["descriptors"].iloc[idx].reset_index(drop=True)
    probabilities = part["probabilities"][idx]
    features, _ = reference.window_features(rows, probabilities, part["embeddings"][idx])
    return features, [part["inputs"][i] for i in idx], probabilities, rows
