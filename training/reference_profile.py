"""The reference profile: what the model saw in training, as the drift monitor's baseline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from training.errors import ModelLoadError

if TYPE_CHECKING:
    from training.inference import Predictions

PROFILE_FILE = "reference_profile.parquet"
PROFILE_COLUMNS = ("label", "predicted_label", "confidence", "probabilities", "embedding")
INPUT_COLUMNS = ("text", "image")  # one of them: the texts, or the images' content keys


def sample_reference_rows(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """A uniform sample of at most ``rows`` rows: it keeps the training label mix, as traffic has."""
    if len(frame) <= rows:
        return frame.reset_index(drop=True)
    return frame.sample(n=rows, random_state=seed).reset_index(drop=True)


def build_reference_profile(
    frame: pd.DataFrame, predictions: Predictions, labels: list[str], column: str = "text"
) -> pd.DataFrame:
    """One row per sampled input: the input (``column``), true label, prediction, confidence,
    probabilities, embedding."""
    probs = predictions.probabilities.astype(np.float32)
    return pd.DataFrame(
        {
            column: frame[column].to_numpy(),
            "label": frame["label"].to_numpy(),
            "predicted_label": [labels[i] for i in probs.argmax(axis=1)],
            "confidence": probs.max(axis=1),
            "probabilities": list(probs),
            "embedding": list(predictions.embeddings.astype(np.float32)),
        }
    )


def write_reference_profile(profile: pd.DataFrame, path: Path) -> None:
    """Write the profile as Parquet."""
    profile.to_parquet(path, index=False)


def read_reference_profile(path: Path) -> pd.DataFrame:
    """Read a profile written by :func:`write_reference_profile`, checking its columns.

    Raises:
        ModelLoadError: the file is missing, unreadable or lacks a column.
    """
    try:
        profile = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Reference profile {path} cannot be read: {exc}") from exc
    missing = [c for c in PROFILE_COLUMNS if c not in profile.columns]
    if not set(INPUT_COLUMNS) & set(profile.columns):
        missing.append(" or ".join(INPUT_COLUMNS))
    if missing:
        raise ModelLoadError(
            f"Reference profile {path} lacks column(s) {missing}; expected "
            f"{[*PROFILE_COLUMNS, INPUT_COLUMNS]}, found {list(profile.columns)}."
        )
    return profile
