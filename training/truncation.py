"""How much of the training texts a text model reads: ``max_length`` against the texts' lengths.

A text longer than ``max_length`` tokens is read up to it and the rest is never seen, in training
and in serving alike. On short texts (tickets, queries) that never happens; on documents it can
hide what decides the label, and nothing else in a run would say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from training.errors import ConfigError
from training.processors import TextProcessor

SAMPLE = 5000  # texts tokenised to measure lengths: the share is estimated from them
WARN_SHARE = 0.05  # truncated share of the training texts from which a run warns


def encoder_max_tokens(tokenizer: Any, path: str) -> int | None:
    """The most tokens the encoder at ``path`` reads (its position embeddings), where it says."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:  # unset, transformers puts ~1e30 there
        return limit
    from transformers import AutoConfig

    try:
        positions = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    except (OSError, ValueError):
        return None
    return positions if isinstance(positions, int) and positions > 0 else None


def check_max_length(max_length: int, limit: int | None, name: str) -> None:
    """Refuse a ``max_length`` beyond what the encoder reads (training would fail in the encoder).

    Raises:
        ConfigError: ``max_length`` is more than the encoder's ``limit`` of tokens.
    """
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"max_length {max_length} is more than {name} reads: its position embeddings stop at "
            f"{limit} tokens. Expected max_length <= {limit}; a longer text is read up to it."
        )


def describe_truncation(
    processor: TextProcessor, texts: Sequence[Any], limit: int | None, name: str, seed: int = 0
) -> str:
    """A warning when at least ``WARN_SHARE`` of ``texts`` are longer than the processor reads,
    with their lengths and what to set; empty otherwise.

    Args:
        processor: the processor training reads the texts with.
        texts: the training texts.
        limit: the most tokens the encoder reads (:func:`encoder_max_tokens`), if known.
        name: the encoder, as the user named it.
        seed: which texts are sampled when there are more than ``SAMPLE``.
    """
    if not len(texts):
        return ""
    sample = list(texts)
    if len(sample) > SAMPLE:
        picked = np.random.default_rng(seed).choice(len(sample), SAMPLE, replace=False)
        sample = [sample[i] for i in picked]
    tokens = processor.tokenizer(processor.prepare(sample), verbose=False)["input_ids"]
    lengths = np.array([len(ids) for ids in tokens])
    longer = lengths > processor.max_length
    if longer.mean() < WARN_SHARE:
        return ""
    sampled = f" sampled from {len(texts)}" if len(texts) > len(sample) else ""
    of = f"{longer.sum()} of {len(sample)}{sampled}"
    if limit is not None and processor.max_length >= limit:
        advice = f"{name} reads at most {limit} tokens: split long texts, or put what decides the label first"
    else:
        wanted = int(2 ** np.ceil(np.log2(np.percentile(lengths, 90))))
        more, cap = (min(wanted, limit), f" ({name} reads at most {limit})") if limit else (wanted, "")
        advice = f"--set max_length={more} reads more{cap}, at a higher cost per text"
    return (
        f"{of} training texts ({longer.mean():.0%}) are longer than max_length ({processor.max_length} "
        f"tokens) and are read only up to it (their median {int(np.median(lengths[longer]))} tokens, "
        f"the longest {lengths.max()}): what comes later in them is never seen. {advice}."
    )
