"""Per-prediction features, computed the same way for the reference profile and live traffic.

- prediction features: predicted label, top probability, entropy, and each class's probability
  (black-box shift detection on the model's own outputs is the strongest published detector at
  small samples; "Failing Loudly", Rabanser et al. 2019, tests every class probability);
- embedding features: the sentence embedding projected on a PCA fitted on the reference;
- input descriptors: for texts, length in characters and words, share of words the tokenizer
  splits into several pieces or maps to unknown, digit, non-ASCII and uppercase shares; for
  images, brightness, contrast, sharpness, saturation, width, height and aspect ratio
  (``training.images.describe_image``, computed when the image was profiled or logged);
- novelty: each input's cosine distance to the nearest reference input (for a reference row, to
  the nearest other one), added by ``monitoring.reference`` which holds the reference embeddings.
  An input of a kind the model never saw (a new intent, a new product) lands far from all of
  them while barely moving the PCA axes, which summarise where the bulk of the inputs sit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from training.images import IMAGE_DESCRIPTORS
from training.probabilities import round_as_logged

PREDICTION_COLUMNS = ("predicted_label", "confidence", "entropy")
TEXT_COLUMNS = (
    "length_chars",
    "length_words",
    "multi_piece_share",
    "unknown_share",
    "digit_share",
    "non_ascii_share",
    "upper_share",
)
CATEGORICAL_COLUMNS = ("predicted_label",)
PROBABILITY_PREFIX = "probability:"  # one column per class: its predicted probability
NOVELTY_COLUMN = "nearest_distance"
NOVELTY_QUANTILE = 0.99  # reference rows (leave-one-out) closer than this count as familiar


def probability_column(label: str) -> str:
    """The feature column of one class's predicted probability."""
    return f"{PROBABILITY_PREFIX}{label}"


def is_probability_column(column: str) -> bool:
    """Whether ``column`` is a class-probability feature."""
    return column.startswith(PROBABILITY_PREFIX)


class InputDescriptors(Protocol):
    """A modality's descriptors of its inputs, the drift check's view of the inputs themselves."""

    columns: tuple[str, ...]

    def describe(self, rows: pd.DataFrame) -> pd.DataFrame:
        """One row of descriptors per row of a profile or a log window."""
        ...


@dataclass
class TextDescriptors:
    """Computed from the texts with the model's own tokenizer (no downloads)."""

    tokenizer: Any
    columns: tuple[str, ...] = TEXT_COLUMNS

    def describe(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Descriptors of the ``text`` column."""
        return text_descriptors(list(rows["text"]), self.tokenizer)


@dataclass
class ImageDescriptors:
    """Read from the rows: computed from each image when it was profiled or logged."""

    columns: tuple[str, ...] = IMAGE_DESCRIPTORS

    def describe(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The descriptor columns (NaN where a row lacks them)."""
        return rows.reindex(columns=list(self.columns)).astype(float).reset_index(drop=True)


@dataclass
class FeatureSpace:
    """What turns raw outputs into features: label names, input descriptors and the reference PCA."""

    labels: list[str]
    descriptors: InputDescriptors
    mean: np.ndarray  # (hidden,) reference embedding mean
    components: np.ndarray  # (k, hidden) principal axes of the reference embeddings

    @property
    def embedding_columns(self) -> list[str]:
        """Names of the PCA features."""
        return [f"embedding_pc{i + 1}" for i in range(len(self.components))]

    @property
    def probability_columns(self) -> list[str]:
        """Names of the class-probability features, in the model's label order."""
        return [probability_column(label) for label in self.labels]


def novelty_threshold(familiar: np.ndarray) -> float:
    """The distance beyond which an input counts as novel: the reference rows' own (leave-one-out)
    ``NOVELTY_QUANTILE`` of nearest-reference distances; 0 for an empty reference."""
    return float(np.quantile(familiar, NOVELTY_QUANTILE)) if len(familiar) else 0.0


def fit_feature_space(
    labels: list[str], descriptors: InputDescriptors, reference_embeddings: np.ndarray, components: int
) -> FeatureSpace:
    """Fit the PCA of the embedding features on the reference embeddings (rows, hidden)."""
    from sklearn.decomposition import PCA

    # The full solver is exact and deterministic (the randomized one differs from run to run).
    pca = PCA(min(components, *reference_embeddings.shape), svd_solver="full").fit(reference_embeddings)
    return FeatureSpace(labels=labels, descriptors=descriptors, mean=pca.mean_, components=pca.components_)


def prediction_features(probabilities: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """Predicted label, top probability and entropy (nats) per row of ``probabilities``."""
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1.0)
    return pd.DataFrame(
        {
            "predicted_label": [labels[i] for i in p.argmax(axis=1)],
            "confidence": p.max(axis=1),
            "entropy": -(p * np.log(p)).sum(axis=1),
        }
    )


def text_descriptors(texts: Sequence[str], tokenizer: Any) -> pd.DataFrame:
    """Offline descriptors of each text (no downloads: only the model's own tokenizer)."""
    encoded = tokenizer(list(texts), add_special_tokens=False)
    unk = tokenizer.unk_token_id
    rows = []
    for i, text in enumerate(texts):
        word_ids = encoded.word_ids(i)
        ids = encoded["input_ids"][i]
        pieces: dict[int, int] = {}
        unknown: set[int] = set()
        for word, token in zip(word_ids, ids, strict=True):
            if word is None:
                continue
            pieces[word] = pieces.get(word, 0) + 1
            if token == unk:
                unknown.add(word)
        words = max(1, len(pieces))
        chars = max(1, len(text))
        rows.append(
            (
                len(text),
                len(text.split()),
                sum(count > 1 for count in pieces.values()) / words,
                len(unknown) / words,
                sum(c.isdigit() for c in text) / chars,
                sum(ord(c) > 127 for c in text) / chars,
                sum(c.isupper() for c in text) / chars,
            )
        )
    return pd.DataFrame(rows, columns=list(TEXT_COLUMNS))


def build_features(
    space: FeatureSpace, rows: pd.DataFrame, probabilities: np.ndarray, embeddings: np.ndarray
) -> pd.DataFrame:
    """All features of a set of predictions (``rows``: the profile's or the log window's), one row each.

    Probabilities are read as the inference log rounds them, whichever side they come from.
    """
    probabilities = round_as_logged(probabilities)
    projected = (embeddings - space.mean) @ space.components.T
    frames = [
        prediction_features(probabilities, space.labels),
        pd.DataFrame(projected, columns=space.embedding_columns),
        space.descriptors.describe(rows),
        pd.DataFrame(probabilities.astype(np.float64), columns=space.probability_columns),
    ]
    return pd.concat(frames, axis=1)
