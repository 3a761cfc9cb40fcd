"""Rows that belong together (one part photographed under several lights, one customer's
tickets): splits and cross-validation folds that keep each group on one side.

Rows of one group are near-copies of each other. With one of them in training and another in
validation or test, selection, early stopping and the test metrics read what the model
memorised: on the magnetic tiles (six photos of each tile, one per light) `head` read 0.96
accuracy on a random split of the photos and 0.81 on a split of the tiles (README, "Rows that
belong together").
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from training.errors import DataError

GROUP = "group"  # the frame column holding each row's group, when the config names one
OWN_GROUP = "row:"  # the prefix of a blank cell's group: named by the row's place in its table


def read_groups(values: pd.Series) -> pd.Series:
    """Each row's group from a data column; a blank cell is a group of its own (a row known to
    share nothing, such as a feedback row)."""
    text = values.astype("string").fillna("").str.strip()
    own = pd.Series([f"{OWN_GROUP}{i}" for i in range(len(text))], index=text.index, dtype="string")
    return text.where(text.ne(""), own).astype(str)


def is_own_group(groups: pd.Series) -> pd.Series:
    """Which groups are a single row's own (a blank cell), as opposed to a name the data gave."""
    return groups.astype(str).str.startswith(OWN_GROUP)


def has_groups(frame: pd.DataFrame) -> bool:
    """Whether the rows carry groups."""
    return GROUP in frame.columns


def group_ids(frame: pd.DataFrame) -> np.ndarray:
    """Each row's group as an array; a row added without one (a pseudo-labelled input) is a group
    of its own."""
    values = frame[GROUP].to_numpy(dtype=object, copy=True)
    missing = pd.isna(values)
    values[missing] = [f"added:{i}" for i in np.flatnonzero(missing)]
    return values


def group_split(
    frame: pd.DataFrame, fractions: tuple[float, float], seed: int, column: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Split whole groups into train / validation / test by (validation, test) fractions, the
    labels' shares kept as well as whole groups allow (scikit-learn's ``StratifiedGroupKFold``).

    Every label keeps training rows: a label whose groups all went to validation or test gets its
    smallest one back. Returns the three frames and notes for the user (labels left without test
    or validation rows, groups moved back).

    Raises:
        DataError: fewer than two groups to split, or no test rows left.
    """
    val_frac, test_frac = fractions
    notes: list[str] = []
    test_index = _one_fold(frame, test_frac, seed, column, "test")
    rest = frame.drop(index=test_index)
    val_index = _one_fold(rest, val_frac / (1 - test_frac), seed, column, "validation")
    side = pd.Series("train", index=frame.index)
    side[test_index], side[val_index] = "test", "validation"
    for label in sorted(set(frame["label"]) - set(frame.loc[side.eq("train"), "label"])):
        for part in ("validation", "test"):
            held = frame[side.eq(part) & frame["label"].eq(label)]
            if len(held):
                smallest = frame[GROUP].eq(held[GROUP].value_counts(ascending=True).index[0])
                side[smallest] = "train"
                notes.append(
                    f"label {label!r}: all its {column} groups fell outside training; one "
                    f"({int(smallest.sum())} rows) was moved back from {part}"
                )
                break
    for part, fraction in (("validation", val_frac), ("test", test_frac)):
        if fraction <= 0:
            continue
        share = float(side.eq(part).mean())
        if part == "test" and share == 0:
            raise DataError(
                f"Keeping each {column!r} group on one side leaves no test rows: every label's groups "
                "are needed for training. Expected more groups per label, or pass a --test-file."
            )
        if share > 1.5 * fraction:
            notes.append(
                f"the {part} split holds {share:.0%} of the rows (asked {fraction:.0%}): few {column} groups"
            )
        missing = sorted(set(frame["label"]) - set(frame.loc[side.eq(part), "label"]))
        if missing:
            notes.append(
                f"{len(missing)} label(s) without {part} rows when each {column} group stays on one "
                f"side: {missing[:5]}"
            )
    train, val, test = (frame[side.eq(k)].reset_index(drop=True) for k in ("train", "validation", "test"))
    return train, val, test, notes


def _one_fold(frame: pd.DataFrame, fraction: float, seed: int, column: str, part: str) -> pd.Index:
    """The index of about ``fraction`` of the rows, whole groups, stratified by label; with fewer
    groups (or rows of the largest label) than ``1 / fraction``, one fold of as many."""
    if fraction <= 0:
        return frame.index[:0]
    groups = frame[GROUP].nunique()
    if groups < 2:
        raise DataError(
            f"group_column {column!r} leaves {groups} group for the {part} split and training; keeping "
            "each group on one side needs at least 2. Expected a column naming what rows belong "
            "together (a part, a customer), or pass a --test-file, or no group_column."
        )
    # scikit-learn refuses more folds than the largest label has rows
    largest = int(frame["label"].value_counts().max())
    folds = max(2, min(round(1 / fraction), groups, largest))
    folded = stratified_group_folds(frame["label"].to_numpy(), frame[GROUP].to_numpy(), folds, seed)
    return frame.index[folded[0][1]]


def stratified_group_folds(
    y: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (fit, held-out) index pairs, each group held out in exactly one, labels stratified."""
    from sklearn.model_selection import StratifiedGroupKFold

    with warnings.catch_warnings():  # a label with fewer groups than folds is in fewer folds: fine
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y, groups))


def count_shared_groups(train: pd.DataFrame, test: pd.DataFrame) -> int:
    """Test rows whose group also has rows in the training data (0 when either lacks groups)."""
    if not (has_groups(train) and has_groups(test)):
        return 0
    named = test[GROUP][~is_own_group(test[GROUP])]
    return int(named.isin(set(train[GROUP])).sum())
