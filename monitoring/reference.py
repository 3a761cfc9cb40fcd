"""The production version's reference: its profile turned into features, and what it takes to
turn live predictions into the same features (an encoder for embeddings, the PCA, a calibrator,
the novelty threshold).

Everything derived from the profile is cached on disk per version and setting, so a one-shot
`refit drift` does not rebuild it; the encoder is the version's ONNX export when it has one
(loads in a fraction of a second, where the torch weights take seconds).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.features import (
    NOVELTY_COLUMN,
    NOVELTY_QUANTILE,
    FeatureSpace,
    ImageDescriptors,
    InputDescriptors,
    TextDescriptors,
    build_features,
    fit_feature_space,
    novelty_threshold,
)
from training.artifacts import (
    ONNX_DIR,
    load_version_processor,
    load_version_profile,
    load_version_tokenizer,
    read_labels,
    version_modality,
)
from training.groups import group_ids, has_groups
from training.novelty import nearest_distance
from training.processors import Processor
from training.registry import ModelVersion

logger = logging.getLogger(__name__)

CACHE_FORMAT = 5  # bump when what is cached changes


class Encoder:
    """Logits and embeddings of a version: its ONNX export when present, else its torch weights."""

    def __init__(self, version: ModelVersion, processor: Processor) -> None:
        self.version = version
        self.processor = processor
        self._session: Any = None
        self._model: Any = None

    def outputs(
        self, texts: list[str], names: tuple[str, ...] = ("logits", "embeddings")
    ) -> list[np.ndarray]:
        """The named outputs of ``texts``: ``logits`` (n, labels), ``embeddings`` (n, hidden)."""
        from training.onnx_export import onnx_outputs, onnx_session
        from training.onnx_files import ONNX_FILE

        export = self.version.path / ONNX_DIR / ONNX_FILE
        if export.is_file():
            if self._session is None:
                self._session = onnx_session(export, ["CPUExecutionProvider"])
            return onnx_outputs(self._session, self.processor, texts, names)
        if self._model is None:
            from training.artifacts import load_version_model

            self._model, _ = load_version_model(self.version)
        from training.inference import predict

        predictions = predict(self._model, self.processor, texts)
        return [getattr(predictions, n) for n in names]

    def embed(self, inputs: list[Any]) -> np.ndarray:
        """Embeddings (n, hidden) of ``inputs``, as the reference's were computed."""
        return self.outputs(inputs, ("embeddings",))[0]


@dataclass
class Reference:
    """Everything one version's checks share."""

    version: ModelVersion
    space: FeatureSpace
    features: pd.DataFrame
    encoder: Encoder
    calibration: tuple[np.ndarray, np.ndarray]  # isotonic map: confidence -> P(correct)
    embeddings: np.ndarray  # (rows, hidden) reference embeddings, for novelty

    @property
    def novelty_threshold(self) -> float:
        """Cosine distance to the nearest reference input beyond which an input is novel."""
        return novelty_threshold(self.features[NOVELTY_COLUMN].to_numpy())

    def live_features(
        self, rows: pd.DataFrame, inputs: list[Any], probabilities: np.ndarray
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Features of logged predictions (``rows`` of the window; ``inputs`` what the model reads
        for them: texts, or the logged image files) and the embeddings' novelty: each input's
        distance to the nearest reference input."""
        return self.window_features(rows, probabilities, self.encoder.embed(inputs))

    def window_features(
        self, rows: pd.DataFrame, probabilities: np.ndarray, embeddings: np.ndarray
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Features of predictions whose embeddings are already known, with each one's distance
        to the nearest reference input (also returned on its own)."""
        distances = nearest_distance(embeddings, self.embeddings)
        features = build_features(self.space, rows, probabilities, embeddings)
        return features.assign(**{NOVELTY_COLUMN: distances.astype(np.float64)}), distances

    def estimate_correct(self, confidence: Any) -> np.ndarray:
        """P(correct) of each prediction from its confidence, through the reference's calibration."""
        return np.interp(np.asarray(confidence, dtype=np.float64), *self.calibration)


def fit_calibration(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic regression of correctness on confidence, as (thresholds, values) for interpolation.

    The training pipeline already temperature-scales the model; this corrects what remains on the
    reference's held-out rows, which is what confidence-based performance estimation needs.
    """
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(confidence, correct)
    return np.asarray(iso.X_thresholds_), np.asarray(iso.y_thresholds_)


def load_reference(
    version: ModelVersion, components: int = 8, rows: int = 5000, cache_dir: Path | None = None
) -> Reference:
    """Build the reference of ``version`` from its saved profile (or its cache) and model.

    Raises:
        ModelLoadError: the profile or the model is missing or corrupt.
    """
    descriptors = input_descriptors(version)
    labels = read_labels(version)
    cache = (
        cache_dir / f"{version.name}-{version.version}-pca{components}-rows{rows}-v{CACHE_FORMAT}"
        if cache_dir
        else None
    )
    cached = _read_cache(cache) if cache else None
    if cached is None:
        cached = _derive(version, labels, descriptors, components, rows)
        if cache:
            _write_cache(cache, cached)
    features, arrays = cached
    space = FeatureSpace(
        labels=labels, descriptors=descriptors, mean=arrays["mean"], components=arrays["components"]
    )
    return Reference(
        version=version,
        space=space,
        features=features,
        encoder=Encoder(version, load_version_processor(version)),
        calibration=(arrays["calibration_x"], arrays["calibration_y"]),
        embeddings=arrays["embeddings"],
    )


def input_descriptors(version: ModelVersion) -> InputDescriptors:
    """The descriptors of the version's inputs: computed from texts, or read from image rows."""
    if version_modality(version) == "image":
        return ImageDescriptors()
    return TextDescriptors(load_version_tokenizer(version))


def _derive(
    version: ModelVersion, labels: list[str], descriptors: InputDescriptors, components: int, rows: int
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    profile = load_version_profile(version)
    # An adapted version's profile holds the (unlabelled) target inputs it adapted to: the domain
    # it serves, so that is the baseline; its calibration still needs the labelled rows.
    labelled = profile[profile["label"].notna()].reset_index(drop=True)
    domain = profile[profile["label"].isna()].reset_index(drop=True)
    profile = domain if len(domain) else labelled
    if len(profile) > rows:
        profile = profile.sample(n=rows, random_state=0).reset_index(drop=True)
    embeddings = np.stack(profile["embedding"].to_numpy()).astype(np.float32)
    probabilities = np.stack(profile["probabilities"].to_numpy()).astype(np.float32)
    space = fit_feature_space(labels, descriptors, embeddings, components)
    correct = (labelled["predicted_label"] == labelled["label"]).to_numpy(dtype=float)
    calibration = fit_calibration(np.asarray(labelled["confidence"], dtype=np.float64), correct)
    # Rows of one group (group_column: a part's photos under other lights) are no evidence that a
    # row is familiar: live inputs are new parts.
    groups = group_ids(profile) if has_groups(profile) else None
    if groups is not None and len(set(groups)) < 2:
        groups = None
    familiar = (
        nearest_distance(embeddings, embeddings, exclude_self=True, groups=groups)
        if len(embeddings) > 1
        else np.zeros(len(embeddings), dtype=np.float32)
    )
    features = build_features(space, profile, probabilities, embeddings)
    features[NOVELTY_COLUMN] = familiar.astype(np.float64)
    arrays = {
        "mean": space.mean,
        "components": space.components,
        "calibration_x": calibration[0],
        "calibration_y": calibration[1],
        "embeddings": embeddings,
    }
    return features, arrays


def _read_cache(path: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]] | None:
    try:
        with np.load(path.with_suffix(".npz")) as data:
            arrays = {key: data[key] for key in data.files}
        return pd.read_parquet(path.with_suffix(".parquet")), arrays
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(path: Path, cached: tuple[pd.DataFrame, dict[str, np.ndarray]]) -> None:
    """Write each file under a temporary name and rename it: a reader never sees half a file, and
    since both are derived deterministically from the same version, any pair read is consistent."""
    features, arrays = cached
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix, write in (
            (".parquet", lambda f: features.to_parquet(f, index=False)),
            (".npz", lambda f: np.savez(f, **arrays)),  # type: ignore[arg-type]
        ):
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=suffix)
            with os.fdopen(fd, "wb") as out:
                write(out)
            os.replace(tmp, path.with_suffix(suffix))
    except OSError as exc:  # a cache that cannot be written only costs time
        logger.warning("could not cache the reference of %s: %s", path.name, exc)


def assess_estimate(distances: np.ndarray, threshold: float, alpha: float) -> tuple[bool, float, str]:
    """Whether the label-free accuracy estimate can be trusted on a window, from its novelty.

    CBPE assumes the model's confidences stay calibrated on the new data. That fails on inputs
    the model has no class for: it gives them a confident known label. Such inputs sit far from
    every reference text, so the window's share beyond the reference's own 99th-percentile
    distance is compared with the 1% expected (one-sided binomial test at ``alpha``); a
    significant excess of at least 5% of the window marks the estimate untrusted.

    Returns:
        (trusted, share of novel texts, a sentence saying why).
    """
    from scipy.stats import binomtest

    novel = int((distances > threshold).sum())
    total = max(1, len(distances))
    share, expected = novel / total, 1 - NOVELTY_QUANTILE
    p_value = binomtest(novel, total, expected, alternative="greater").pvalue
    trusted = not (p_value < alpha and share >= 0.05)
    found = (
        f"{novel} of {total} inputs ({share:.1%}) are farther from every reference input "
        "than 99% of reference inputs"
    )
    if not trusted:
        return (
            False,
            share,
            f"NOT TRUSTED: {found} (expected 1%, binomial p {p_value:.1e}). CBPE assumes calibrated "
            "confidences, which fails on inputs the model has no class for (it answers them confidently)",
        )
    if p_value < alpha:  # more than chance, too few to move the estimate much
        return (
            True,
            share,
            f"{found} (expected 1%, binomial p {p_value:.1e}): more than chance, but under the 5% of "
            "the window that would make the estimate untrusted; read it as an upper bound",
        )
    return True, share, f"{found} (expected 1%): the inputs look like the reference, CBPE's assumption holds"
