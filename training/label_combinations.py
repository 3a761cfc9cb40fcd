"""Multi-label data (a tags column) read as one label per row: labels that join other labels
("billing;refund" beside "billing" and "refund"), or lists in a JSON or Parquet label column.
Each combination would be trained as a class of its own, learned only from the rows carrying
exactly that combination."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from training.errors import DataError
from training.label_variants import label_key

# Not "/": "hardware/printer" names one class of a hierarchy, not two tags.
_JOINERS = re.compile(r"\s*[;,|+]\s*")
_MAX_LISTED = 5


def find_label_combinations(labels: list[str]) -> dict[str, list[str]]:
    """Each label of ``labels`` that joins two or more others, with the labels it joins."""
    known = {label_key(label): label for label in labels}
    found = {}
    for label in labels:
        parts = [part for part in _JOINERS.split(label) if part]
        joined = [known.get(label_key(part)) for part in parts]
        if len(parts) > 1 and all(joined):
            found[label] = [str(part) for part in joined]
    return found


def describe_label_combinations(counts: Mapping[str, int]) -> str:
    """A data warning for labels of ``counts`` (rows per label) that join other labels, or ""."""
    found = find_label_combinations(sorted(counts, key=lambda label: -counts[label]))
    if not found:
        return ""
    shown = "; ".join(
        f"{label!r} ({counts[label]}) = {' + '.join(repr(p) for p in parts)}"
        for label, parts in list(found.items())[:_MAX_LISTED]
    )
    more = f", and {len(found) - _MAX_LISTED} more" if len(found) > _MAX_LISTED else ""
    return (
        f"{len(found)} label(s) join other labels, each trained as a class of its own from its own "
        f"rows only: {shown}{more}. Refit answers one label per text: keep each row's main label, "
        "or train one model per tag"
    )


def read_single_labels(values: pd.Series, source: Path | str, column: str) -> pd.Series:
    """``values`` with a list of one label read as that label (a JSON or Parquet tags column);
    other values as they are.

    Raises:
        DataError: rows carry lists of several labels; the message names them.
    """
    lists = values.map(lambda v: isinstance(v, list | tuple | np.ndarray))
    if not lists.any():
        return values
    sizes = values[lists].map(len)
    several = sizes[sizes > 1]
    if len(several):
        rows = ", ".join(str(i + 1) for i in several.index[:_MAX_LISTED])
        example = [str(v) for v in values[several.index[0]]]
        raise DataError(
            f"{len(several)} row(s) of {source} carry several labels in {column!r} (data rows {rows}"
            f"{', ...' if len(several) > _MAX_LISTED else ''}; e.g. {example}). Refit answers one label "
            "per text: expected one label per row (a list of one is read as that label). Hint: keep "
            "each row's main label."
        )
    return values.where(~lists, values[lists].map(lambda v: str(v[0]) if len(v) else None))
