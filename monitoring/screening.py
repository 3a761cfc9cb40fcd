"""Feedback is untrusted: quarantine labels that contradict production in a concentrated way.

Anyone holding a `feedback` key writes training data. Two kinds of poison are caught here, both
defined by *confident contradictions*: rows whose label is one production knows, differs from
production's answer, and production gave that answer with at least ``confidence`` (calibrated,
so an honest labeller rarely contradicts it: production is right about that often).

- **A source that flips labels**: when several sources sent feedback, one whose labels contradict
  production's confident answers at least ``SOURCE_RATE`` of the time and ``SOURCE_RATIO`` times
  as often as the others do is not a labeller who disagrees sometimes. Every row of that source
  whose label differs from production's answer, at any confidence and new labels included, is
  quarantined (the rows that agree with production teach nothing harmful). With one source there
  is nothing to compare with, and drift makes an honest labeller contradict a lot.
- **A trigger (backdoor)**: a word in at least half of the confident contradictions towards one
  label, in at least ``min_rows`` of them, in fewer than ``RARE_IN_TRAINING`` of the texts
  production trained on, and labelled with that label in at least ``LABEL_SPECIFIC`` of the
  feedback rows that carry it: texts of another intent carrying a planted token. Every row with
  that word and that label is quarantined, whoever sent it.

Labels production does not know (new intents) are never contradictions, so they never flag a
source or a trigger: adding a label is an
operator's act (`refit models add-label`), and a new intent is what honest drift feedback looks like.
Quarantined rows stay in the log; the retrain's audit row and `refit feedback list` report them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from monitoring.feedback import stable_fraction
from service.keys import ANONYMOUS

SOURCE_RATE = 0.5  # a source contradicting confident answers at least this often ...
SOURCE_RATIO = 3.0  # ... and this many times as often as the other sources, is quarantined
RARE_IN_TRAINING = 0.01  # a trigger is in fewer than this share of production's training texts
LABEL_SPECIFIC = 0.9  # and this share of the feedback rows carrying it has the attacker's label
WORD = re.compile(r"[^\W\d_]{3,}")


@dataclass(frozen=True)
class ScreenRules:
    """How sure production must be before a label may contradict it, and how many rows make a pattern."""

    confidence: float = 0.9
    min_rows: int = 10


@dataclass
class Screened:
    """The feedback rows kept for training, those quarantined (with a ``reason``), and why."""

    kept: pd.DataFrame
    quarantined: pd.DataFrame
    findings: dict[str, int] = field(default_factory=dict)  # reason -> rows quarantined for it


def sources_of(frame: pd.DataFrame) -> pd.Series:
    """Each row's source, ``anonymous`` where none was recorded."""
    if "source" not in frame:
        return pd.Series(ANONYMOUS, index=frame.index)
    return frame["source"].fillna(ANONYMOUS).astype(str)


def words_of(text: str) -> set[str]:
    """The words (3+ letters, lower case) a trigger is looked for among."""
    return set(WORD.findall(text.lower()))


def screen_feedback(
    rows: pd.DataFrame,
    predicted: np.ndarray,
    confidence: np.ndarray,
    known: Iterable[str],
    training_texts: Iterable[str],
    rules: ScreenRules,
) -> Screened:
    """Split feedback ``rows`` into kept and quarantined (see the module docstring).

    Args:
        rows: feedback with ``text``, ``label`` and ``source`` columns.
        predicted: production's label for each row.
        confidence: production's probability of that label for each row.
        known: production's labels.
        training_texts: the texts production trained on (for how rare a word is there).
        rules: the confidence and row count that make a pattern.
    """
    rows = rows.reset_index(drop=True).assign(source=lambda f: sources_of(f))
    confident = np.asarray(confidence) >= rules.confidence
    disagrees = rows["label"].to_numpy() != np.asarray(predicted)
    contradicts = rows["label"].isin(set(known)).to_numpy() & disagrees & confident
    row_words = [words_of(str(t)) for t in rows["text"]]
    reasons = pd.Series("", index=rows.index)
    findings: dict[str, int] = {}
    for source, reason in flag_sources(rows["source"], confident, contradicts, rules).items():
        _mark(reasons, (rows["source"] == source).to_numpy() & disagrees, reason, findings)
    triggers = flag_triggers(rows["label"], row_words, contradicts, training_texts, rules)
    for label, (trigger, reason) in triggers.items():
        carries = np.array([bool(trigger & words) for words in row_words], dtype=bool)
        _mark(reasons, (rows["label"] == label).to_numpy() & carries, reason, findings)
    out = reasons != ""
    return Screened(rows[~out].reset_index(drop=True), rows[out].assign(reason=reasons[out]), findings)


def _mark(reasons: pd.Series, hit: np.ndarray, reason: str, findings: dict[str, int]) -> None:
    new = hit & (reasons == "").to_numpy()
    reasons[new] = reason
    if new.any():
        findings[reason] = int(new.sum())


def flag_sources(
    sources: pd.Series, confident: np.ndarray, contradicts: np.ndarray, rules: ScreenRules
) -> dict[str, str]:
    """Sources whose labels contradict production's confident answers far more often than the others'."""
    flagged: dict[str, str] = {}
    names = sources.to_numpy()
    for source in sorted(set(names)):
        mine, others = names == source, names != source
        n_mine, n_others = int((confident & mine).sum()), int((confident & others).sum())
        if n_mine < rules.min_rows or n_others < rules.min_rows:
            continue
        rate = (contradicts & mine).sum() / n_mine
        base = (contradicts & others).sum() / n_others
        if rate >= SOURCE_RATE and rate >= SOURCE_RATIO * base:
            flagged[source] = (
                f"source {source}: contradicted {rate:.0%} of {n_mine} confident answers "
                f"(the other sources {base:.0%} of {n_others})"
            )
    return flagged


def flag_triggers(
    labels: pd.Series,
    row_words: list[set[str]],
    contradicts: np.ndarray,
    training_texts: Iterable[str],
    rules: ScreenRules,
) -> dict[str, tuple[set[str], str]]:
    """Per label, the words that look like a planted trigger towards it, with the reason.

    Args:
        labels: each feedback row's label.
        row_words: each feedback row's words (:func:`words_of`).
        contradicts: which rows are confident contradictions.
        training_texts: the texts production trained on.
        rules: the row count that makes a pattern.
    """
    flagged: dict[str, tuple[set[str], str]] = {}
    if contradicts.sum() < rules.min_rows:
        return flagged
    training = [words_of(t) for t in training_texts]
    label_values = labels.to_numpy()
    for label in sorted(set(label_values[contradicts])):
        group = [row_words[i] for i in np.flatnonzero(contradicts & (label_values == label))]
        counts = Counter(word for words in group for word in words)
        found: dict[str, int] = {}
        for word, count in counts.items():
            if count < rules.min_rows or count < 0.5 * len(group):
                continue
            carrying = label_values[[word in words for words in row_words]]
            if (carrying == label).mean() < LABEL_SPECIFIC:
                continue
            if sum(word in words for words in training) / max(len(training), 1) < RARE_IN_TRAINING:
                found[word] = count
        if found:
            named = ", ".join(repr(w) for w in sorted(found))
            flagged[str(label)] = (
                set(found),
                f"trigger {named} -> {label}: in up to {max(found.values())} of {len(group)} confident "
                f"contradictions, under {RARE_IN_TRAINING:.0%} of the training texts",
            )
    return flagged


def cap_sources(rows: pd.DataFrame, max_share: float) -> tuple[pd.DataFrame, dict[str, int]]:
    """At most ``max_share`` of the ``rows`` from any one source, when there are several sources.

    A source over its cap keeps a hash-fixed subset (the same rows at every retrain); the dropped
    counts are returned by source.
    """
    sources = sources_of(rows)
    counts = sources.value_counts()
    if len(counts) < 2 or max_share >= 1:
        return rows, {}
    keep = pd.Series(True, index=rows.index)
    dropped: dict[str, int] = {}
    for source, count in counts.items():
        others = len(rows) - count
        cap = int(max_share / (1 - max_share) * others)
        if count <= cap:
            continue
        mine = rows[sources == source]
        order = (mine["text"].astype(str) + "\x00" + str(source)).map(stable_fraction).sort_values()
        keep[order.index[cap:]] = False
        dropped[str(source)] = int(count - cap)
    return rows[keep].reset_index(drop=True), dropped
