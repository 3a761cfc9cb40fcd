"""Procedurally drawn inspection images: textured metal surfaces, clean or with a defect.

The image demo and the tests train on these; nothing is downloaded. A surface is a grey texture
under a lighting level; a defect is drawn on it: a scratch (a long thin line), a spot (a dark
blob) or a crack (a jagged dark path). Lighting and a new defect type are the drift the image
demo's monitor must see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

LABELS = ("free", "scratch", "spot", "crack")
NEW_DEFECT = "stain"  # appears only in the image demo's drifted traffic


def draw_surface(label: str, rng: np.random.Generator, size: int = 64, lighting: float = 0.0) -> Image.Image:
    """One RGB surface image of ``label``.

    Args:
        label: ``free`` or a defect of :data:`LABELS`.
        rng: where the texture, position and shape of the defect come from.
        size: side in pixels.
        lighting: added to the mean grey level, -1 (dark) to 1 (bright); 0 is the usual light.
    """
    level = 128 + 60 * lighting
    noise = rng.normal(0, 18, size=(size, size))
    texture = Image.fromarray(np.clip(level + noise, 0, 255).astype(np.uint8), mode="L")
    image = texture.filter(ImageFilter.GaussianBlur(1.0))
    draw = ImageDraw.Draw(image)
    dark = int(max(0, level - 80))
    if label == "scratch":
        x0, y0 = rng.uniform(0, size * 0.3, size=2)
        x1, y1 = rng.uniform(size * 0.7, size, size=2)
        draw.line([(x0, y0), (x1, y1)], fill=dark, width=max(1, size // 32))
    elif label == "spot":
        cx, cy = rng.uniform(size * 0.2, size * 0.8, size=2)
        r = rng.uniform(size * 0.06, size * 0.12)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=dark)
    elif label == "crack":
        point = rng.uniform(size * 0.1, size * 0.3, size=2)
        path = [tuple(point)]
        for _ in range(8):
            point = point + rng.uniform(-size * 0.02, size * 0.12, size=2)
            path.append(tuple(np.clip(point, 0, size - 1)))
        draw.line(path, fill=dark, width=max(1, size // 40))
    elif label == NEW_DEFECT:  # a wide, soft, lighter blotch
        cx, cy = rng.uniform(size * 0.3, size * 0.7, size=2)
        r = rng.uniform(size * 0.18, size * 0.3)
        blotch = Image.new("L", image.size, 0)
        ImageDraw.Draw(blotch).ellipse([cx - r, cy - r * 0.6, cx + r, cy + r * 0.6], fill=70)
        image = Image.composite(
            Image.new("L", image.size, int(min(255, level + 60))),
            image,
            blotch.filter(ImageFilter.GaussianBlur(3)),
        )
    elif label not in LABELS:
        raise ValueError(f"Unknown surface label {label!r}; expected one of {(*LABELS, NEW_DEFECT)}")
    return image.convert("RGB")


def write_surface_data(
    directory: Path, seed: int = 7, per_class: int = 170, size: int = 96
) -> dict[str, Path]:
    """The image demo's data: a training folder, calm traffic, and drifted traffic (a darker light,
    then the new defect type under it) as CSV files of image paths and labels.

    Returns:
        ``train`` (a folder of class folders), ``traffic``, ``drift_light`` and ``drift`` (CSV files).
    """
    train = write_surfaces(directory / "train", per_class, seed, size=size)
    paths: dict[str, Path] = {"train": train}
    plans = {
        # Calm traffic long enough for a check of a full window on it before the drift (50 requests/s).
        "traffic": (LABELS, 0.0, per_class, seed + 1),
        "drift_light": (LABELS, -0.6, per_class // 2, seed + 3),
        "drift": ((*LABELS, NEW_DEFECT), -0.6, per_class // 2, seed + 2),
    }
    for name, (labels, lighting, count, part_seed) in plans.items():
        folder = write_surfaces(directory / name, count, part_seed, labels, size, lighting)
        rows = [{"path": str(p), "label": p.parent.name} for p in sorted(folder.rglob("*.png"))]
        paths[name] = directory / f"{name}.csv"
        pd.DataFrame(rows).sample(frac=1.0, random_state=part_seed).to_csv(paths[name], index=False)
    return paths


def write_surfaces(
    root: Path,
    per_class: int,
    seed: int = 0,
    labels: tuple[str, ...] = LABELS,
    size: int = 64,
    lighting: float = 0.0,
) -> Path:
    """Write ``root/<label>/<label>-<i>.png`` for each label; return ``root``."""
    rng = np.random.default_rng(seed)
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_surface(label, rng, size, lighting).save(root / label / f"{label}-{i}.png")
    return root
