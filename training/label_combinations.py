"""Labels that join other labels ("billing;refund" beside "billing" and "refund"): the mark of
multi-label data (a tags column) read as one label per row. Each combination would be trained as
a class of its own, learned only from the rows carrying exactly that combination."""

from __future__ import annotations

import re
from collections.abc import Mapping

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
