"""How much of the training texts a text model reads (training.truncation)."""

from __future__ import annotations

from pathlib import Path

from training.processors import TextProcessor, load_tokenizer
from training.truncation import describe_truncation, encoder_max_tokens


def test_a_large_set_is_sampled_and_short_texts_say_nothing(tiny_base_model: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_base_model))
    # The tiny tokenizer sets no maximum: the encoder's config does.
    assert encoder_max_tokens(tokenizer, str(tiny_base_model)) == 64
    processor = TextProcessor(tokenizer, 8)
    texts = ["refund my payment"] * 5800 + ["refund my payment now please " * 3] * 1200
    note = describe_truncation(processor, texts, 64, "tiny")
    assert " of 5000 sampled from 7000 training texts (" in note
    assert "(their median 17 tokens, the longest 17)" in note
    assert describe_truncation(processor, texts[:5800], 64, "tiny") == ""


def test_at_the_encoders_limit_the_advice_is_to_split_the_texts(tiny_base_model: Path) -> None:
    processor = TextProcessor(load_tokenizer(str(tiny_base_model)), 16)
    note = describe_truncation(processor, ["refund my payment " * 10] * 20, 16, "tiny")
    assert "20 of 20 training texts (100%)" in note
    advice = "tiny reads at most 16 tokens: split long texts, or put what decides the label first."
    assert note.endswith(advice)
