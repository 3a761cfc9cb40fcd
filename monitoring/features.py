"""Per-prediction features, computed the same way for the reference profile and live traffic.

- prediction features: predicted label, top probability, entropy (black-box shift detection on
  the model's own outputs is the strongest published detector at small samples);
- embedding features: the sentence embedding projected on a PCA fitted on the reference;
- text descriptors: length in characters and words, share of words the tokenizer splits into
  several pieces or maps to unknown, digit, non-ASCII and uppercase shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

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


@dataclass
class FeatureSpace:
    """What turns raw outputs into features: label names, the tokenizer and the reference PCA."""

    labels: list[str]
    tokenizer: Any
    mean: np.ndarray  # (hidden,) reference embedding mean
    components: np.ndarray  # (k, hidden) principal axes of the reference embeddings

    @property
    def embedding_columns(self) -> list[str]:
        """Names of the PCA features."""
        return [f"embedding_pc{i + 1}" for i in range(len(self.components))]

    @property
    def numerical_columns(self) -> list[str]:
        """Every numerical feature column."""
        return (
            [c for c in PREDICTION_COLUMNS if c not in CATEGORICAL_COLUMNS]
            + self.embedding_columns
            + list(TEXT_COLUMNS)
        )


def fit_feature_space(
    labels: list[str], tokenizer: Any, reference_embeddings: np.ndarray, components: int
) -> FeatureSpace:
    """Fit the PCA of the embedding features on the reference embeddings (rows, hidden)."""
    from sklearn.decomposition import PCA

    # The full solver is exact and deterministic (the randomized one differs from run to run).
    pca = PCA(min(components, *reference_embeddings.shape), svd_solver="full").fit(reference_embeddings)
    return FeatureSpace(labels=labels, tokenizer=tokenizer, mean=pca.mean_, components=pca.components_)


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
    space: FeatureSpace, texts: Sequence[str], probabilities: np.ndarray, embeddings: np.ndarray
) -> pd.DataFrame:
    """All features of a set of predictions, one row each."""
    projected = (embeddings - space.mean) @ space.components.T
    frames = [
        prediction_features(probabilities, space.labels),
        pd.DataFrame(projected, columns=space.embedding_columns),
        text_descriptors(texts, space.tokenizer),
    ]
    return pd.concat(frames, axis=1)
