"""Domain adaptation strategies: a model trained on the labelled data, adapted to unlabelled inputs.

``bn-adapt`` matches BatchNorm statistics to the target inputs
(:mod:`training.batch_norm_adaptation`); ``tent`` does that, then trains the BatchNorm scales
and shifts to answer the target confidently in the training label mix
(:mod:`training.entropy_adaptation`);
``self-train`` trains the base strategy again with the target inputs the model is sure of
(:mod:`training.self_training`); ``dann`` fine-tunes the top of the encoder until a domain
classifier cannot tell source from target features (:mod:`training.adversarial_adaptation`).
Each starts from the ``adapt_base`` strategy trained on the labelled (source) data.
``tapt`` (texts) continues the encoder's masked-language-model
pretraining on the target texts first, then trains ``adapt_base`` on it
(:mod:`training.language_adaptation`). ``spelling`` (texts) gives the model a processor that
corrects words it cannot read to words of the texts one edit away, the target's own frequent
words counted as known (:mod:`training.spelling`). Each records what it adapted to, so that a version's
lineage reads source -> adapted.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.adversarial_adaptation import align_domains
from training.batch_norm_adaptation import adapt_batch_norm
from training.config import ADAPTATION_STRATEGIES
from training.context import StrategyResult, TrainContext
from training.entropy_adaptation import label_prior, minimise_entropy
from training.errors import DataError
from training.finetune import class_weights, refit_head_on_features
from training.language_adaptation import continue_pretraining
from training.processors import TextProcessor
from training.self_training import pseudo_label, with_pseudo_labels
from training.spelling import count_words, fit_spelling, measure_unknown_words, read_lexicon

# Methods that only mean something for texts, and what each does.
TEXT_METHODS = {
    "tapt": "tapt continues a text encoder's language-model pretraining",
    "spelling": "spelling corrects the words of texts",
}


def load_target(ctx: TrainContext) -> pd.DataFrame:
    """The configured ``target_file``'s inputs, checked (images stored by content).

    Raises:
        DataError: the file is missing or unusable.
    """
    path = ctx.config.target_file
    if path is None:
        raise DataError("No target_file: adaptation needs unlabelled inputs of the target domain.")
    return ctx.modality.load_unlabelled(path)


def source_sample(ctx: TrainContext, size: int) -> list[Any]:
    """Up to ``size`` (at least 64) training inputs, drawn with the run's seed: what the source
    domain looks like to the model."""
    inputs = ctx.inputs("train")
    keep = np.random.default_rng(ctx.config.seed).permutation(len(inputs))[: max(size, 64)]
    return [inputs[i] for i in sorted(keep)]


def describe_target(ctx: TrainContext, target: pd.DataFrame) -> dict[str, Any]:
    """What a version adapted to: the file, the inference-log window, how many inputs, their
    fingerprint."""
    rows = sorted(str(value) for value in target[ctx.modality.column])
    described = {
        "source": str(ctx.config.target_file),
        "inputs": len(target),
        "fingerprint": "sha256:" + hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest(),
    }
    if ctx.config.target_window:
        described["window"] = ctx.config.target_window
    return described


def with_base_model(ctx: TrainContext, path: Path) -> TrainContext:
    """A context whose strategies start from the encoder saved at ``path`` (same data)."""
    config = ctx.config.model_copy(update={"base_model": str(path)})
    return replace(
        ctx, config=config, processor=ctx.modality.load_processor(str(path)), frozen={}, probe=None
    )


def pretrain_and_train(
    ctx: TrainContext, texts: list[str], train: Callable[[str, TrainContext], StrategyResult]
) -> tuple[StrategyResult, dict[str, Any]]:
    """``adapt_base`` trained on an encoder pretrained further on ``texts`` (TAPT); the MLM numbers."""
    cfg = ctx.config
    with tempfile.TemporaryDirectory(prefix="refit-tapt-") as directory:
        mlm = continue_pretraining(
            ctx.base_model, texts, Path(directory), epochs=cfg.adapt_epochs,
            learning_rate=cfg.adapt_learning_rate, batch_size=cfg.batch_size, max_length=cfg.max_length,
            seed=cfg.seed, device=ctx.device,
        )  # fmt: skip
        result = train(cfg.adapt_base, with_base_model(ctx, Path(directory)))
    return result, mlm


def correct_spelling(ctx: TrainContext, texts: list[str]) -> tuple[TextProcessor, dict[str, Any]]:
    """The run's text processor with a corrector fitted on the source's words (or the saved
    lexicon ``spelling_lexicon`` names) and ``texts``, and what it changed on them (the share of
    their words the model cannot read, before and after)."""
    assert isinstance(ctx.processor, TextProcessor)  # adapt_model lets only text models here
    lexicon = ctx.config.spelling_lexicon
    known = count_words(ctx.inputs("train")) if lexicon is None else read_lexicon(lexicon)
    spelling = fit_spelling(known, texts, ctx.processor.tokenizer)
    measured = {**spelling.describe(), **measure_unknown_words(spelling, texts)}
    return ctx.processor.with_spelling(spelling), measured


def adapt_model(
    name: str,
    ctx: TrainContext,
    base: StrategyResult | None,
    train: Callable[[str, TrainContext], StrategyResult],
) -> StrategyResult:
    """Adapt ``base`` (``adapt_base`` trained on the labelled data; trained here when None) to the
    target inputs with strategy ``name``; ``train`` runs a strategy.

    Raises:
        ValueError: an unknown strategy, or one that needs what the model lacks (BatchNorm, texts).
        DataError: the target inputs are unusable.
    """
    if name not in ADAPTATION_STRATEGIES:
        raise ValueError(
            f"Unknown adaptation strategy {name!r}; expected one of {list(ADAPTATION_STRATEGIES)}"
        )
    if name in TEXT_METHODS and ctx.modality.name != "text":
        raise ValueError(f"{TEXT_METHODS[name]}; for images use bn-adapt, tent, self-train or dann")
    cfg = ctx.config
    target = load_target(ctx)
    inputs = ctx.modality.inputs(target)
    start = time.perf_counter()
    adaptation: dict[str, Any] = {
        "method": name,
        "base_strategy": cfg.adapt_base,
        "target": describe_target(ctx, target),
    }
    if name == "tapt":
        pretrained, adaptation["mlm"] = pretrain_and_train(ctx, inputs, train)
        adaptation["seconds"] = round(time.perf_counter() - start, 2)
        return replace(
            pretrained, strategy=name, details={"adaptation": adaptation, "base": pretrained.details}
        )
    corrected = None
    if name == "spelling":  # the model reads corrected texts; its weights stay the base's
        # Fitted first, so that a base trained here reads its labelled texts corrected too (those
        # of a retrain on labels have the channel's typos).
        corrected, adaptation["spelling"] = correct_spelling(ctx, inputs)
    base = base or train(cfg.adapt_base, ctx if corrected is None else ctx.reading_with(corrected))
    model = base.model
    details: dict[str, Any] = {"adaptation": adaptation, "base": base.details}
    refit_head, trainable, processor = base.refit_head, 0, corrected or base.processor
    if name == "self-train":
        augments = ctx.modality.name == "image" and cfg.augment
        rows, adaptation["pseudo_labels"] = pseudo_label(
            model, ctx.processor, target, inputs, ctx.splits.labels, cfg.pseudo_label_threshold, augments,
            cfg.seed,
        )  # fmt: skip
        retrained = train(cfg.adapt_base, with_pseudo_labels(ctx, rows))
        model, refit_head = retrained.model, retrained.refit_head
        details["retrained"] = retrained.details
    elif name == "dann":
        weights = class_weights(ctx.label_ids("train"), len(ctx.splits.labels))
        adversarial = align_domains(
            model, ctx.processor, ctx.inputs("train"), ctx.label_ids("train"), inputs,
            layers=cfg.partial_layers, epochs=cfg.adapt_epochs, learning_rate=cfg.adapt_learning_rate,
            batch_size=cfg.batch_size, class_weights=weights,
            augment=ctx.modality.name == "image" and cfg.augment, seed=cfg.seed,
        )  # fmt: skip
        # The base's refitted head fits the old features; as after fine-tuning, a fresh probe on
        # the aligned ones (without it, 3 epochs of the top layers on 380 tiles lost 0.07 macro-F1).
        head, refit_head = refit_head_on_features(model, ctx, cfg.reprobe_after_finetune)
        adaptation["adversarial"], trainable = {**adversarial, **head}, int(adversarial["trainable_params"])
    elif name in ("bn-adapt", "tent"):
        adaptation["batch_norm"] = adapt_batch_norm(
            model, ctx.processor, inputs, source_sample(ctx, len(inputs)), cfg.bn_layers, cfg.bn_mix,
            cfg.batch_size,
        )  # fmt: skip
    if name == "tent":
        entropy = minimise_entropy(
            model,
            ctx.processor,
            inputs,
            label_prior(ctx.label_ids("train"), len(ctx.splits.labels)),
            epochs=cfg.adapt_epochs,
            learning_rate=cfg.adapt_learning_rate,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
        adaptation["entropy"] = entropy
        trainable = int(entropy["trainable_params"])
    adaptation["seconds"] = round(time.perf_counter() - start, 2)
    return StrategyResult(
        name,
        model.eval(),
        base.train_seconds + time.perf_counter() - start,
        base.trainable_params + trainable,
        details,
        # bn-adapt and tent keep the base's refitted head (fitted on the source rows' features:
        # they change the encoder's normalisation only); self-train's is its own.
        refit_head,
        processor=processor,
    )
