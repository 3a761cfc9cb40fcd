"""Task-adaptive pretraining (TAPT): the text encoder's masked-language-model training continued
on the unlabelled target texts, so that their words (typos, a channel's abbreviations) get
representations before a head is trained on the labelled source texts.

Sentence encoders such as all-MiniLM-L6-v2 ship without their MLM head's transform: it is
initialised and warmed up first with the encoder frozen, or its random gradients would scramble
the encoder in the first steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.model import resolve_base_model
from training.processors import load_tokenizer
from training.progress import track_progress

MASK_PROBABILITY = 0.15  # BERT's


def load_masked_lm(base_model: str) -> tuple[Any, bool]:
    """The base model with a masked-language-model head, and whether that head was initialised
    (missing from the checkpoint)."""
    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(base_model, output_loading_info=True)
    return model, any(key.startswith("cls.") for key in info["missing_keys"])


def mask_batch(
    tokenizer: Any, texts: Sequence[str], max_length: int, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """Token ids with MASK_PROBABILITY of the real tokens masked (80% [MASK], 10% a random token,
    10% kept) and the labels to predict there (-100 elsewhere)."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    ids = batch["input_ids"].clone()
    special = torch.tensor(
        [tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in ids.tolist()],
        dtype=torch.bool,
    )
    candidates = ~special & batch["attention_mask"].bool()
    chosen = torch.from_numpy(rng.random(ids.shape) < MASK_PROBABILITY) & candidates
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.from_numpy(rng.random(ids.shape))
    ids[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[swap] = torch.from_numpy(rng.integers(len(tokenizer), size=int(swap.sum())))
    return {"input_ids": ids, "attention_mask": batch["attention_mask"], "labels": labels}


def masked_lm_loss(
    model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int, seed: int
) -> float:
    """Mean MLM loss on ``texts`` under a masking fixed by ``seed`` (comparable before and after)."""
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    losses, weights = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = mask_batch(tokenizer, texts[start : start + batch_size], max_length, rng)
            masked = int((batch["labels"] != -100).sum())
            if masked:
                losses.append(float(model(**{k: v.to(device) for k, v in batch.items()}).loss) * masked)
                weights.append(masked)
    return sum(losses) / max(sum(weights), 1)


def continue_pretraining(
    base_model: str,
    texts: Sequence[str],
    output: Path,
    *,
    epochs: int = 3,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 0,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train ``base_model``'s encoder with the MLM objective on ``texts``; save it to ``output``
    (encoder and tokenizer, loadable as a base model).

    Returns:
        For the version's manifest: texts, epochs, learning rate, whether the MLM head was
        initialised, and the MLM loss on the texts before and after (the same masking).
    """
    torch.manual_seed(seed)
    base_model = resolve_base_model(base_model)  # `minilm` is the packaged all-MiniLM-L6-v2
    tokenizer = load_tokenizer(base_model)
    model, initialised = load_masked_lm(base_model)
    model.to(device or torch.device("cpu"))
    texts = list(texts)
    before = masked_lm_loss(model, tokenizer, texts, max_length, batch_size, seed)
    rng = np.random.default_rng(seed + 1)
    if initialised:  # one epoch on the head alone
        model.base_model.requires_grad_(False)
        _train(
            model,
            tokenizer,
            texts,
            1,
            learning_rate * 10,
            batch_size,
            max_length,
            rng,
            "warming the MLM head",
        )
        model.base_model.requires_grad_(True)
    _train(
        model,
        tokenizer,
        texts,
        epochs,
        learning_rate,
        batch_size,
        max_length,
        rng,
        "pretraining on the target",
    )
    after = masked_lm_loss(model, tokenizer, texts, max_length, batch_size, seed)
    model.base_model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return {
        "texts": len(texts),
        "epochs": epochs,
        "learning_rate": learning_rate,
        "mlm_head_initialised": initialised,
        "mlm_loss_before": round(before, 4),
        "mlm_loss_after": round(after, 4),
    }


def _train(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    epochs: int,
    learning_rate: float,
    batch_size: int,
    max_length: int,
    rng: np.random.Generator,
    description: str,
) -> None:
    """``epochs`` passes of AdamW over the trainable parameters, in shuffled batches."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    device = next(model.parameters()).device
    model.train()
    batches = [(epoch, start) for epoch in range(epochs) for start in range(0, len(texts), batch_size)]
    order = [rng.permutation(len(texts)) for _ in range(epochs)]
    for epoch, start in track_progress(batches, description, total=len(batches), unit="batches"):
        chosen = [texts[i] for i in order[epoch][start : start + batch_size]]
        batch = mask_batch(tokenizer, chosen, max_length, rng)
        if not (batch["labels"] != -100).any():
            continue
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
