"""Spelling normalisation: a word the model never read becomes the text word one edit away.

A text model trained on clean texts reads a typo ("refnud") as word pieces it learnt nothing
about; a channel full of typos costs it accuracy that no amount of head training on clean rows
gives back. The lexicon is the words of the labelled (source) texts and the words the target
texts use often enough to be the new channel's own rather than slips (``min_target_count``
times, and at least ``SLIP_SHARE`` as often as any text word one edit away); the tokenizer's
whole words are known too. A word that is none of these is replaced by the lexicon word one
edit away (a letter dropped, doubled, swapped or changed) seen most often in the texts, and
left as it is when there is none.

The corrector is saved with the model (``spelling.json``) and applied by its processor before
tokenizing, so evaluation, serving, ONNX and the gate read the same corrected text; the
inference log keeps the text as it was sent.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from training.errors import DataError

SPELLING_FILE = "spelling.json"
WORD = re.compile(r"[A-Za-z]+")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# A target word seen this share as often as a text word one edit away is a word of its own: one
# typo form of a word is about 1% of its uses at a typo in one word in six, word forms far more.
SLIP_SHARE = 0.1
CACHE_SIZE = 100_000  # corrections remembered per process; live traffic has no bound on new words
# Longer runs of letters are left alone: no word of a ticket is this long, and the edits of a
# client's 100,000-letter run would be 5 million strings of its length.
MAX_WORD_LENGTH = 30


class SpellingCorrector:
    """Maps words the model cannot read to the word of the texts one edit away.

    Args:
        counts: lexicon words (lower case) -> times seen in the source and target texts.
        vocabulary: the tokenizer's whole words: known, so never corrected, but never a correction.
        min_length: shorter words are left alone (one edit away from too many others).
    """

    def __init__(self, counts: dict[str, int], vocabulary: Iterable[str], min_length: int = 3) -> None:
        self.counts = counts
        self.min_length = min_length
        self.known = frozenset(counts) | frozenset(vocabulary)
        self._cache: dict[str, str] = {}

    def correct(self, text: str) -> str:
        """``text`` with every unknown word replaced by its correction (case of the first letter kept)."""
        return WORD.sub(lambda match: self.correct_word(match.group()), text)

    def correct_word(self, word: str) -> str:
        """The correction of one alphabetic word, or the word itself."""
        lower = word.lower()
        if not self.min_length <= len(lower) <= MAX_WORD_LENGTH or lower in self.known:
            return word
        fixed = self._cache.get(lower)
        if fixed is None:
            fixed = self.choose(lower)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[lower] = fixed
        if fixed == lower:
            return word
        if word.isupper() and len(word) > 1:
            return fixed.upper()
        return fixed.capitalize() if word[0].isupper() else fixed

    def choose(self, word: str) -> str:
        """The text word one edit from ``word`` seen most often (alphabetically first on ties).

        Only words of the texts are corrections: a word outside them that is one edit from a
        tokenizer word is as often a real word the texts never used ("expire" is one edit from
        "empire") as a slip, and the model learnt nothing about the tokenizer's words anyway."""
        candidates = sorted(edits(word) & self.counts.keys())
        if not candidates:
            return word
        return max(candidates, key=lambda c: self.counts[c])  # max keeps the first of equals

    def describe(self) -> dict[str, Any]:
        """For the manifest: the lexicon's size."""
        return {"lexicon_words": len(self.counts), "vocabulary_words": len(self.known) - len(self.counts)}

    def save(self, directory: Path) -> None:
        """Write the counted lexicon (the vocabulary comes back with the tokenizer)."""
        spec = {"min_length": self.min_length, "counts": dict(sorted(self.counts.items()))}
        (directory / SPELLING_FILE).write_text(json.dumps(spec), encoding="utf-8")


def edits(word: str) -> set[str]:
    """Every string one deletion, transposition, replacement or insertion from ``word``."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    deletes = {a + b[1:] for a, b in splits if b}
    swaps = {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    replaces = {a + c + b[1:] for a, b in splits if b for c in LETTERS}
    inserts = {a + c + b for a, b in splits for c in LETTERS}
    return deletes | swaps | replaces | inserts


def count_words(texts: Iterable[str]) -> Counter[str]:
    """Lower-case alphabetic words of ``texts`` and how often each occurs."""
    return Counter(word.lower() for text in texts for word in WORD.findall(text))


def tokenizer_words(tokenizer: Any) -> set[str]:
    """The whole alphabetic words of a tokenizer's vocabulary (word-start markers stripped,
    WordPiece continuations left out)."""
    words = set()
    for token in tokenizer.get_vocab():
        if token.startswith("##"):
            continue
        word = token.lstrip("Ġ▁")
        if len(word) > 1 and word.isascii() and word.isalpha():
            words.add(word.lower())
    return words


def fit_spelling(
    known: Mapping[str, int], target: Iterable[str], tokenizer: Any, min_target_count: int = 3
) -> SpellingCorrector:
    """A corrector whose lexicon is the known words, the tokenizer's and the target's own.

    A target word is the new domain's own when it is seen at least ``min_target_count`` times and
    at least SLIP_SHARE as often as any text word one edit from it: a slip of a common word is
    much rarer than the word ("delete" beside "deleted" is a word, "refnud" beside "refund" a slip).

    Args:
        known: the words the model was trained on and how often: ``count_words`` of the labelled
            texts, or a saved corrector's lexicon (``read_lexicon``), whose corrections then last.
        target: unlabelled texts of the new domain.
        tokenizer: the model's tokenizer.
        min_target_count: the least a target word must be seen to be a word rather than a slip.
    """
    seen, new = Counter(known), count_words(target)
    counts = seen + new

    def is_own(word: str, n: int) -> bool:
        neighbours = [counts[c] for c in edits(word) & counts.keys()]
        return n >= min_target_count and n >= SLIP_SHARE * max(neighbours, default=0)

    own = {word for word, n in new.items() if word not in seen and is_own(word, n)}
    return SpellingCorrector({word: counts[word] for word in set(seen) | own}, tokenizer_words(tokenizer))


def measure_unknown_words(spelling: SpellingCorrector, texts: list[str]) -> dict[str, Any]:
    """The share of the words of ``texts`` (as long as the corrector reads) outside its lexicon,
    before and after correction, and how many words it changed."""
    words = [w.lower() for text in texts for w in WORD.findall(text) if len(w) >= spelling.min_length]
    fixed = [spelling.correct_word(w) for w in words]
    share = lambda ws: round(sum(w not in spelling.known for w in ws) / max(len(ws), 1), 4)  # noqa: E731
    return {
        "unknown_word_share_before": share(words),
        "unknown_word_share_after": share(fixed),
        "corrected_words": sum(a != b for a, b in zip(words, fixed, strict=True)),
    }


def read_lexicon(path: Path) -> dict[str, int]:
    """The counted lexicon of a saved corrector (a ``spelling.json``).

    Raises:
        DataError: the file is missing or is not a saved corrector.
    """
    return read_saved(path)[0]


def read_saved(path: Path) -> tuple[dict[str, int], int]:
    """A saved corrector's counted lexicon and minimum word length, parsed once.

    Raises:
        DataError: the file is missing or is not a saved corrector.
    """
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        return {str(word): int(n) for word, n in spec["counts"].items()}, int(spec["min_length"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{path}: expected a spelling corrector's {SPELLING_FILE} (a JSON object with counts"
            f" and min_length); {exc}"
        ) from exc


def load_spelling(directory: Path, tokenizer: Any) -> SpellingCorrector | None:
    """The corrector saved beside a model, or None when the model has none."""
    path = directory / SPELLING_FILE
    if not path.is_file():
        return None
    counts, min_length = read_saved(path)
    return SpellingCorrector(counts, tokenizer_words(tokenizer), min_length)
