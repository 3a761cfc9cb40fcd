"""Feedback for a retrain, pure: one row per text, a hash-fixed gate holdout, rules for new labels.

A row's side of the split is fixed by a hash of its text, not drawn anew at each retrain: otherwise
the gate of a later retrain would hold rows that the production version was trained on, and
production would win the comparison on rows it had learnt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from training.data import normalize_text


def labelled_rows(feedback: pd.DataFrame) -> pd.DataFrame:
    """The feedback's (text, label, source) rows, one per text: the latest label wins."""
    columns = [c for c in ("text", "label", "source") if c in feedback]
    return feedback.dropna(subset=["text", "label"]).drop_duplicates("text", keep="last")[columns]


def split_feedback(feedback: pd.DataFrame, holdout: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training part, gate part) of the feedback: one row per text, about ``holdout`` in the gate."""
    rows = labelled_rows(feedback)
    in_gate = normalized_texts(rows).map(stable_fraction) < holdout
    return rows[~in_gate].reset_index(drop=True), rows[in_gate].reset_index(drop=True)


def stable_fraction(text: str) -> float:
    """A number in [0, 1) fixed by ``text`` alone (the same in every process and on every run)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def normalized_texts(frame: pd.DataFrame) -> pd.Series:
    """The ``text`` column as compared for identity (see :func:`training.data.normalize_text`)."""
    return frame["text"].map(lambda text: normalize_text(str(text)))


def merge_feedback(original: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``original`` training rows plus feedback ``rows``; a feedback label replaces any older one.

    A later retrain starts from a version that already holds earlier feedback: without this, each
    retrain would count those rows once more, and a corrected label would sit beside the old one.
    """
    kept = original[~normalized_texts(original).isin(set(normalized_texts(rows)))]
    return pd.concat([kept, rows[["text", "label"]]], ignore_index=True)


def drop_seen_rows(seen: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The ``rows`` whose text is not among the ``seen`` rows (a version's training or test data).

    A refitted production version has learnt the gate rows of its own retrain; compared on them,
    it would win against any candidate.
    """
    return rows[~normalized_texts(rows).isin(set(normalized_texts(seen)))].reset_index(drop=True)


def hold_back_rare_new_labels(
    rows: pd.DataFrame, known: list[str], min_examples: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop rows of labels the model does not know yet and that have fewer than ``min_examples``.

    Their rows wait for more feedback (they stay in the log). The default minimum is 1 (no label
    waits): on BANKING77, intents held back until they had 3 rows scored 0 in the promoted
    version, while a single row already counts under class-balanced weights. Raise it when
    feedback is noisy and one mislabelled row should not create a label.
    """
    counts = rows["label"].value_counts()
    rare = {str(k): int(v) for k, v in counts.items() if k not in known and v < min_examples}
    return rows[~rows["label"].isin(rare)].reset_index(drop=True), rare


@dataclass
class RetrainData:
    """The rows of one retrain: production's own, the feedback for training, and the gate's."""

    original: pd.DataFrame  # production's train and validation splits
    train: pd.DataFrame  # feedback the candidate trains on (rare new labels held back)
    gate: pd.DataFrame  # held-out feedback production never trained on
    refit: pd.DataFrame  # feedback the refit trains on: all of it, rare new labels held back
    held_back: dict[str, int]  # new labels waiting for more rows, with their row counts
    test_rows: int = 0  # feedback texts of the test split, left out


def split_retrain_data(
    original: pd.DataFrame,
    test: pd.DataFrame,
    known: list[str],
    feedback: pd.DataFrame,
    holdout: float,
    min_examples: int,
) -> RetrainData:
    """Split the feedback for the candidate, the gate and the refit of one retrain.

    Feedback on a text of the test split is left out of all three: trained on, it would pass the
    gate's test-split check on rows it had learnt and report test metrics it had seen (traffic
    repeats short texts, and a test split is often drawn from past traffic).

    Args:
        original: the rows production trained on (its train and validation splits).
        test: production's test split, which the gate and the new version's metrics read.
        known: production's labels.
        feedback: the feedback log's rows (``text``, ``label``), oldest first.
        holdout: share of the feedback texts kept for the gate.
        min_examples: rows a new label needs before it is trained on.
    """
    rows = labelled_rows(feedback)
    unseen = drop_seen_rows(test, rows)
    train_part, gate_part = split_feedback(unseen, holdout)
    gate_part = drop_seen_rows(original, gate_part)
    train_rows, held_back = hold_back_rare_new_labels(train_part, known, min_examples)
    refit_rows, _ = hold_back_rare_new_labels(pd.concat([train_part, gate_part]), known, min_examples)
    return RetrainData(original, train_rows, gate_part, refit_rows, held_back, len(rows) - len(unseen))
