"""The production version's reference: its profile turned into features, and what it takes to
turn live predictions into the same features (the model for embeddings, the PCA, a calibrator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from monitoring.features import FeatureSpace, build_features, fit_feature_space
from training.artifacts import load_version_model, load_version_profile, read_labels
from training.inference import predict
from training.registry import ModelVersion


@dataclass
class Reference:
    """Everything one version's checks share."""

    version: ModelVersion
    space: FeatureSpace
    features: pd.DataFrame
    model: Any
    max_length: int
    calibration: tuple[np.ndarray, np.ndarray]  # isotonic map: confidence -> P(correct)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Sentence embeddings of live texts, as the reference's were computed."""
        predictions = predict(self.model, self.space.tokenizer, texts, max_length=self.max_length)
        return predictions.embeddings

    def live_features(self, texts: list[str], probabilities: np.ndarray) -> pd.DataFrame:
        """Features of logged predictions (their probabilities, re-computed embeddings)."""
        return build_features(self.space, texts, probabilities, self.embed(texts))

    def estimate_accuracy(self, confidence: np.ndarray) -> float:
        """Label-free accuracy estimate (CBPE): mean calibrated probability of being right."""
        x, y = self.calibration
        return float(np.interp(confidence, x, y).mean()) if len(confidence) else float("nan")


def fit_calibration(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic regression of correctness on confidence, as (thresholds, values) for interpolation.

    The training pipeline already temperature-scales the model; this corrects what remains on the
    reference's held-out rows, which is what confidence-based performance estimation needs.
    """
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(confidence, correct)
    return np.asarray(iso.X_thresholds_), np.asarray(iso.y_thresholds_)


def load_reference(version: ModelVersion, components: int = 8, rows: int = 5000) -> Reference:
    """Build the reference of ``version`` from its saved profile and model.

    Raises:
        ModelLoadError: the profile or the model is missing or corrupt.
    """
    profile = load_version_profile(version)
    if len(profile) > rows:
        profile = profile.sample(n=rows, random_state=0).reset_index(drop=True)
    model, tokenizer = load_version_model(version)
    labels = read_labels(version)
    embeddings = np.stack(profile["embedding"].to_numpy()).astype(np.float32)
    probabilities = np.stack(profile["probabilities"].to_numpy()).astype(np.float32)
    space = fit_feature_space(labels, tokenizer, embeddings, components)
    features = build_features(space, list(profile["text"]), probabilities, embeddings)
    correct = (profile["predicted_label"] == profile["label"]).to_numpy(dtype=float)
    return Reference(
        version=version,
        space=space,
        features=features,
        model=model,
        max_length=int(version.manifest.get("max_length", 128)),
        calibration=fit_calibration(features["confidence"].to_numpy(), correct),
    )
