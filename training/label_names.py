"""Label names as training rows: a text classifier's labels often say what they mean
(``card_arrival``, ``refund_not_showing_up``), and with a few examples per label the name is one
more of them. Measured on BANKING77 at 10 per intent together with the contrastive loss
(:mod:`training.contrastive`); see the README's training benchmarks.
"""

from __future__ import annotations

import dataclasses
import re

import pandas as pd

from training.data import DatasetSplits
from training.errors import ConfigError
from training.groups import GROUP, OWN_GROUP


def name_text(label: str) -> str:
    """A label's name as a text: underscores, hyphens and runs of spaces read as one space."""
    return re.sub(r"[\s_-]+", " ", label).strip()


def add_label_name_rows(splits: DatasetSplits, modality: str) -> DatasetSplits:
    """``splits`` with one more training row per label whose name reads as a text: the name.

    Raises:
        ConfigError: the inputs are not texts (an image has no name to read).
    """
    if modality != "text":
        raise ConfigError(f"label_name_examples reads label names as texts; found {modality} inputs.")
    named = [(text, label) for label in splits.labels if (text := name_text(label))]
    rows = pd.DataFrame({"text": [t for t, _ in named], "label": [label for _, label in named]})
    if GROUP in splits.train.columns:  # each name its own group: it shares no tile or ticket
        rows[GROUP] = [f"{OWN_GROUP}label name {label}" for _, label in named]
    return dataclasses.replace(splits, train=pd.concat([splits.train, rows], ignore_index=True))
