"""Labels that stand for no label: what spreadsheets and databases write in an empty cell
("N/A", "#N/A", "null", "None", "-"). Read as text, each would be trained as a class of its own,
and the model would learn to answer it."""

from __future__ import annotations

from collections.abc import Mapping

PLACEHOLDERS = frozenset({"n/a", "#n/a", "na", "nan", "null", "none", "nil", "-", "--", "?", "(blank)"})


def find_placeholder_labels(labels: list[str]) -> list[str]:
    """The labels of ``labels`` that are a placeholder for a missing one, in their order."""
    return [label for label in labels if label.strip().casefold() in PLACEHOLDERS]


def describe_placeholder_labels(counts: Mapping[str, int]) -> str:
    """A data warning for labels of ``counts`` (rows per label) that stand for no label, or ""."""
    found = find_placeholder_labels(list(counts))
    if not found:
        return ""
    shown = ", ".join(f"{label!r} ({counts[label]} rows)" for label in found)
    return (
        f"label(s) {shown} look like a missing label (what a spreadsheet or database writes for none), "
        "and are trained as a class the model will answer. If those rows have no label, drop them or "
        "label them; if it is a class, name it (e.g. 'not_applicable')"
    )
