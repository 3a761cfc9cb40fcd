"""One label written two ways: in another case, or with other separators ("Account_locked",
"account locked", "account-locked"). A spreadsheet's hand-typed labels drift like this, and each
spelling would silently become a class of its own, splitting its examples."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

_SEPARATORS = re.compile(r"[\s_\-]+")
_MAX_LISTED = 5


def label_key(label: str) -> str:
    """What two spellings of one label share: NFKC, case folded, separators as one space."""
    return _SEPARATORS.sub(" ", unicodedata.normalize("NFKC", label).casefold()).strip()


def find_label_variants(labels: Iterable[str]) -> list[list[str]]:
    """Groups of two or more labels with the same :func:`label_key`, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for label in dict.fromkeys(labels):
        groups.setdefault(label_key(label), []).append(label)
    return [group for group in groups.values() if len(group) > 1]


def describe_label_variants(counts: Mapping[str, int]) -> str:
    """A data warning for labels of ``counts`` (rows per label) written more than one way, or ""."""
    groups = find_label_variants(sorted(counts, key=lambda label: -counts[label]))
    if not groups:
        return ""
    shown = "; ".join(
        " / ".join(f"{label!r} ({counts[label]})" for label in group) for group in groups[:_MAX_LISTED]
    )
    more = f", and {len(groups) - _MAX_LISTED} more" if len(groups) > _MAX_LISTED else ""
    return (
        f"{len(groups)} label(s) written more than one way (case or separators), each spelling "
        f"trained as a class of its own: {shown}{more}. If they are one label, write it one way in "
        "the data"
    )


def matching_label(label: str, labels: Iterable[str]) -> str | None:
    """The label of ``labels`` that ``label`` is another spelling of, or None."""
    key = label_key(label)
    return next((known for known in labels if known != label and label_key(known) == key), None)
