"""Labelled text data: loading, validation, stratified splits and a dataset fingerprint."""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.errors import DataError
from training.groups import GROUP, count_shared_groups, group_split, has_groups, read_groups
from training.label_combinations import (
    describe_label_combinations,
    find_label_combinations,
    read_single_labels,
)
from training.label_variants import describe_label_variants
from training.placeholder_labels import describe_placeholder_labels
from training.tables import read_table

logger = logging.getLogger(__name__)

_MAX_ROWS_LISTED = 5


@dataclass
class DataReport:
    """Findings that do not stop training but that a user should see."""

    rows: int
    duplicate_rows: int = 0  # same text and label seen before
    conflicting_texts: int = 0  # same text with different labels
    train_test_overlap: int = 0  # test texts that also occur in the training data
    class_counts: dict[str, int] = field(default_factory=dict)
    split_cost: str = ""  # what carving validation and test out of few rows per label costs
    shared_groups: int = 0  # test rows of a group (group_column) that also has training rows
    group_notes: list[str] = field(default_factory=list)  # what keeping groups whole cost the splits
    label_variants: str = ""  # labels written more than one way (training.label_variants)
    label_combinations: str = ""  # labels that join other labels (training.label_combinations)
    placeholder_labels: str = ""  # labels that stand for none, "N/A" (training.placeholder_labels)
    truncated_texts: str = ""  # many texts longer than the model reads (training.truncation)
    untested_labels: list[str] = field(default_factory=list)  # labels the test file has no row of

    def warnings(self) -> list[str]:
        """Human-readable warnings for each non-zero finding."""
        found = []
        if self.duplicate_rows:
            found.append(f"{self.duplicate_rows} duplicate rows (same text and label)")
        if self.conflicting_texts:
            found.append(f"{self.conflicting_texts} texts appear with more than one label")
        if self.label_variants:
            found.append(self.label_variants)
        if self.label_combinations:
            found.append(self.label_combinations)
        if self.placeholder_labels:
            found.append(self.placeholder_labels)
        if self.truncated_texts:
            found.append(self.truncated_texts)
        if self.train_test_overlap:
            found.append(f"{self.train_test_overlap} test texts also appear in the training data")
        if self.untested_labels:
            found.append(
                f"{len(self.untested_labels)} of {len(self.class_counts)} labels have no test rows, so the "
                f"test metrics say nothing of them: {self.untested_labels[:_MAX_ROWS_LISTED]}"
            )
        if self.shared_groups:
            found.append(f"{self.shared_groups} test rows belong to a group that also has training rows")
        if self.split_cost:
            found.append(self.split_cost)
        return found + self.group_notes


@dataclass
class DatasetSplits:
    """Train, validation and test frames (columns ``text`` and ``label``) plus what describes them."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    fingerprint: str
    report: DataReport
    # Which rows every test metric comes from: "file" (and its path) or "split", rows, fingerprint.
    test_set: dict[str, Any] = field(default_factory=dict)


def _row_list(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r) + 1) for r in rows[:_MAX_ROWS_LISTED])
    return shown + (", ..." if len(rows) > _MAX_ROWS_LISTED else "")


def load_dataset(
    path: Path,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    *,
    group_required: bool = True,
    is_test_file: bool = False,
) -> pd.DataFrame:
    """Load and validate labelled texts into a frame with columns ``text`` and ``label`` (and
    ``group`` from ``group_column``, when given and present). ``is_test_file``: the file is the
    test data of training data read with these columns (a missing one is named as such).

    Raises:
        DataError: a missing column (the group column only when ``group_required``), empty texts,
            missing labels; the message lists what was found.
    """
    raw = read_table(Path(path))
    wanted = [text_column, label_column] + ([group_column] if group_column and group_required else [])
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        hint = (
            f"Hint: a test file needs the training data's columns ({text_column!r}, {label_column!r}); "
            "rename its columns."
            if is_test_file
            else "Hint: set text_column / label_column / group_column (--text-column / --label-column / "
            "--set group_column=...)."
        )
        found = list(raw.columns)
        raise DataError(f"Column(s) {missing} not found in {path}. Found columns: {found}. {hint}")
    frame = pd.DataFrame(
        {
            "text": raw[text_column].astype("string").fillna(""),
            "label": read_single_labels(raw[label_column], path, label_column)
            .astype("string")
            .fillna("")
            .str.strip(),
        }
    )
    if group_column and group_column in raw.columns:
        frame[GROUP] = read_groups(raw[group_column])
    validate_texts(frame, path)
    return frame.astype({"text": str, "label": str}).reset_index(drop=True)


def load_unlabelled_texts(path: Path, text_column: str = "text") -> pd.DataFrame:
    """Load and validate unlabelled texts (a domain to adapt to) into a frame with column ``text``.

    Raises:
        DataError: a missing column, no rows, or empty texts; the message lists what was found.
    """
    raw = read_table(Path(path))
    if text_column not in raw.columns:
        raise DataError(
            f"Column {text_column!r} not found in {path}. Found columns: {list(raw.columns)}. "
            "Hint: set text_column (--set text_column=...)."
        )
    if raw.empty:
        raise DataError(f"No texts in {path}: expected one or more rows to adapt to.")
    frame = pd.DataFrame({"text": raw[text_column].astype("string").fillna("")})
    validate_texts(frame, path)
    return frame.astype({"text": str}).reset_index(drop=True)


def validate_texts(frame: pd.DataFrame, source: Path | str) -> None:
    """Reject empty texts and empty labels (where there is a label column), naming the first
    offending data rows (1-based)."""
    empty = np.flatnonzero(frame["text"].str.strip().eq("").to_numpy())
    if len(empty):
        raise DataError(
            f"{len(empty)} empty or whitespace-only text(s) in {source} (data rows {_row_list(empty)}; "
            "1-based, header excluded). Expected non-empty text in every row. "
            "Hint: drop or fill these rows."
        )
    labels = frame["label"] if "label" in frame else pd.Series([], dtype=str)
    unlabelled = np.flatnonzero(labels.eq("").to_numpy())
    if len(unlabelled):
        raise DataError(
            f"{len(unlabelled)} row(s) without a label in {source} (data rows {_row_list(unlabelled)}). "
            "Expected a label in every row. Hint: drop these rows or label them."
        )


def validate_classes(frame: pd.DataFrame, source: Path | str, min_examples: int = 2) -> dict[str, int]:
    """Check there are at least two labels, each with ``min_examples`` rows; return the counts.

    Two rows per label when the test split comes out of the data (a label is both learnt and
    tested); one is enough when a separate test file is given, which lets a retrain learn a new
    label from its first feedback rows.
    """
    counts = frame["label"].value_counts().sort_index()
    if len(counts) < 2:
        raise DataError(
            f"Found a single label ({counts.index[0]!r}, {int(counts.iloc[0])} rows) in {source}. "
            "Expected at least 2 distinct labels to train a classifier."
        )
    rare = counts[counts < min_examples]
    if len(rare):
        listed = ", ".join(f"{label!r} ({n})" for label, n in rare.items())
        joined = [label for label in find_label_combinations(list(counts.index)) if label in rare.index]
        tags = (
            f" {len(joined)} of them join other labels ({joined[0]!r}): the label column holds several "
            "tags per row, and Refit answers one label per text; keep each row's main tag."
            if joined
            else ""
        )
        raise DataError(
            f"Label(s) with fewer than {min_examples} examples in {source}: {listed}. Expected at "
            f"least {min_examples} examples per label so that it can be both learnt and evaluated.{tags} "
            "Hint: add examples, drop these labels, or give a separate test file."
        )
    return {str(k): int(v) for k, v in counts.items()}


def normalize_text(text: str) -> str:
    """Unicode NFC, whitespace collapsed, stripped: what counts as 'the same text'."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def fingerprint_rows(frames: list[pd.DataFrame], column: str = "text") -> str:
    """sha256 over the sorted, normalised (input, label) rows: independent of row order.

    The input is the text, or an image's content key (the sha256 of its bytes)."""
    rows = sorted(
        f"{normalize_text(t)}\t{normalize_text(lab)}"
        for frame in frames
        for t, lab in zip(frame[column], frame["label"], strict=True)
    )
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row.encode("utf-8") + b"\n")
    return "sha256:" + digest.hexdigest()


def stratified_split(
    frame: pd.DataFrame, fractions: tuple[float, float], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split each label's rows into train / validation / test by (validation, test) fractions.

    Every label keeps at least one training row; a label with three or more rows also gets a
    test row when a test fraction is asked for.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    val_frac, test_frac = fractions
    for _, group in frame.groupby("label", sort=True):
        idx = rng.permutation(group.index.to_numpy())
        n = len(idx)
        n_test = round(n * test_frac)
        if test_frac > 0 and n >= 3:
            n_test = max(n_test, 1)
        n_val = round(n * val_frac)
        n_val = min(n_val, max(n - n_test - 1, 0))
        n_test = min(n_test, n - n_val - 1)
        parts["test"].extend(idx[:n_test])
        parts["validation"].extend(idx[n_test : n_test + n_val])
        parts["train"].extend(idx[n_test + n_val :])
    train, val, test = (
        frame.loc[sorted(parts[k])].reset_index(drop=True) for k in ("train", "validation", "test")
    )
    return train, val, test


def count_overlap(train: pd.DataFrame, test: pd.DataFrame, column: str = "text") -> int:
    """Number of test rows whose normalised input also occurs in training data."""
    seen = {normalize_text(t) for t in train[column]}
    return sum(normalize_text(t) in seen for t in test[column])


FEW_ROWS_PER_LABEL = 30  # below this, carving validation and test rows out is worth a warning


def describe_split_cost(class_counts: dict[str, int], train: pd.DataFrame, test_from_file: bool) -> str:
    """A warning when the smallest label gives a large share of its few rows to validation and test."""
    label, count = min(class_counts.items(), key=lambda item: item[1])
    if count >= FEW_ROWS_PER_LABEL:
        return ""
    kept = int((train["label"] == label).sum())
    if kept == count:
        return ""
    spent = "validation" if test_from_file else "validation and test"
    return (
        f"few rows per label: {label!r} has {count}, and the {spent} split(s) take {count - kept} of "
        f"them from training. Pass --test-file to keep the test rows out of the training file, "
        f"--set selection=cv to choose by cross-validation instead of a validation split, and "
        f"compare versions only on the same test set; test metrics on a few rows per label move "
        f"by several points from one split to the next"
    )


def split_frames(
    data: pd.DataFrame,
    test: pd.DataFrame | None = None,
    *,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 42,
    source: str = "the data",
    test_source: str | None = None,
    column: str = "text",
    group_column: str | None = None,
) -> DatasetSplits:
    """Validate loaded frames (columns ``column`` and ``label``) and split them.

    Args:
        data: labelled rows; the test split comes out of them when ``test`` is None.
        test: held-out labelled rows (a test file), or None.
        validation_fraction: share of each label kept for validation (early stopping).
        test_fraction: share of each label kept for testing when there is no ``test``.
        seed: seed of the split.
        source: how to name the data in messages (its path).
        test_source: how to name the test data (its path), when there is one.
        column: the input column, ``text`` or ``image`` (content keys).
        group_column: the data column the ``group`` column was read from, when the rows carry
            groups: then validation and test take whole groups (:mod:`training.groups`).

    Raises:
        DataError: the data cannot be used; the message says why and how to fix it.
    """
    if column == "text":
        validate_texts(data, source)
    class_counts = validate_classes(data, source, min_examples=1 if test is not None else 2)
    normalized = data[column].map(normalize_text)
    report = DataReport(
        rows=len(data),
        duplicate_rows=int(pd.DataFrame({"t": normalized, "l": data["label"]}).duplicated().sum()),
        conflicting_texts=int((data.assign(t=normalized).groupby("t")["label"].nunique() > 1).sum()),
        class_counts=class_counts,
        label_variants=describe_label_variants(class_counts),
        label_combinations=describe_label_combinations(class_counts),
        placeholder_labels=describe_placeholder_labels(class_counts),
    )
    if test is not None:
        unknown = sorted(set(test["label"]) - set(class_counts))
        if unknown:
            raise DataError(
                f"The test data has label(s) absent from the training data: {unknown[:10]}. "
                f"Expected only labels of {source}: {sorted(class_counts)[:10]}..."
            )
        train, val, _ = _split(data, (validation_fraction, 0.0), seed, group_column, report)
        report.untested_labels = sorted(set(class_counts) - set(test["label"]))
    else:
        train, val, test = _split(data, (validation_fraction, test_fraction), seed, group_column, report)
    report.train_test_overlap = count_overlap(train, test, column)
    report.shared_groups = count_shared_groups(pd.concat([train, val]), test)
    report.split_cost = describe_split_cost(class_counts, train, test_source is not None)
    # INFO: `refit train` prints them once with its result, and the outcome and manifest carry them.
    for warning in report.warnings():
        logger.info("%s: %s", source, warning)
    frames = [data] if test is None else [data, test]
    groups = {"group_column": group_column, "groups": int(test[GROUP].nunique())} if has_groups(test) else {}
    return DatasetSplits(
        train=train,
        validation=val,
        test=test,
        labels=sorted(class_counts),
        fingerprint=fingerprint_rows(frames, column),
        report=report,
        test_set={
            "source": "file" if test_source is not None else "split",
            "path": test_source if test_source is not None else source,
            "fraction": None if test_source is not None else test_fraction,
            "rows": len(test),
            "fingerprint": fingerprint_rows([test], column),
            **groups,
        },
    )


def _split(
    data: pd.DataFrame,
    fractions: tuple[float, float],
    seed: int,
    group_column: str | None,
    report: DataReport,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Row by row, stratified; or whole groups when the rows carry them (notes into ``report``)."""
    if not has_groups(data):
        return stratified_split(data, fractions, seed)
    train, val, test, notes = group_split(data, fractions, seed, group_column or GROUP)
    report.group_notes = notes
    return train, val, test
