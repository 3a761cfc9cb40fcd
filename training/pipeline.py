"""One training run end to end: data -> strategy (or ladder) -> evaluation -> registered version."""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from training.adaptation import load_target
from training.artifacts import (
    CONFIG_FILE,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_DIR,
    write_json,
    write_splits,
)
from training.config import TrainingConfig
from training.context import StrategyResult, TrainContext
from training.data import DatasetSplits, split_frames
from training.errors import DataError, VersionNotFoundError
from training.evaluation import EvaluationResult, evaluate_predictions
from training.groups import GROUP, group_ids, has_groups
from training.images import IMAGE_DESCRIPTORS, decode_image, describe_image
from training.inference import Predictions, predict
from training.label_names import add_label_name_rows
from training.modality import Modality, create_modality, detect_modality
from training.model import save_classifier
from training.open_set import OpenSet, fit_open_set, sample_open_set_rows
from training.operating_point import (
    apply_operating_point,
    choose_configured_operating_point,
    describe_operating_point,
)
from training.provenance import describe_adaptation, describe_test_set
from training.reference_profile import (
    PROFILE_FILE,
    build_reference_profile,
    sample_reference_rows,
    write_reference_profile,
)
from training.registry import ModelRegistry, ModelVersion
from training.report import render_html, render_markdown, worst_confusions
from training.strategies import evaluate_split, run_ladder, run_strategy

# Held-out rows needed to build the reference profile from them. Few held-out rows only cost the
# check power; training rows cost it its false-alarm rate (a head on 280 tile images was 0.97
# confident on its training rows and 0.88 on unseen ones: 96% false alarms at 50 images).
MIN_HELD_OUT = 30

logger = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """The registered version and the numbers that decided it."""

    version: ModelVersion | None  # None on the non-main processes of a distributed run
    test: EvaluationResult
    validation: EvaluationResult | None
    ladder: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for reproducible runs."""
    from transformers import set_seed

    set_seed(seed)


def train_model(
    data_path: Path,
    config: TrainingConfig,
    *,
    registry: ModelRegistry | None = None,
    promote: bool = False,
    console: Console | None = None,
) -> TrainOutcome:
    """Train on ``data_path`` with ``config`` and register a new version.

    Args:
        data_path: labelled data: texts in a CSV, TSV, JSONL or Parquet file; images in a folder of
            class folders or listed in such a file (``image_column``).
        config: the training config (strategy, base model, hyperparameters).
        registry: where to register; defaults to ``$BENTOML_HOME``.
        promote: make the new version production (the first version of a model always is).
        console: where the ladder table and progress go.

    Raises:
        DataError: the data is unusable. ConfigError / ModelLoadError: see their messages.
    """
    registry = registry or ModelRegistry()
    name = detect_modality(data_path, config)
    modality = create_modality(name, config, registry.home)
    # The saved config names the modality and base model it ran with: a retrain reads them.
    config = modality.settle(
        config.model_copy(
            update={"modality": modality.name, "base_model": config.base_model or modality.default_base_model}
        )
    )
    modality = create_modality(name, config, registry.home)  # reads the config as it will run
    splits = load_splits(data_path, config, modality)
    seed_everything(config.seed)
    ctx = TrainContext.create(config, splits, modality)
    splits.report.truncated_texts = modality.describe_truncation(ctx.processor, splits.train)
    ladder: list[dict[str, Any]] = []
    if config.strategy == "auto":
        outcome = run_ladder(ctx, console or Console())
        result, ladder = outcome.best, [r.to_dict() for r in outcome.rungs]
    else:
        result = run_strategy(config.strategy, ctx)
    ctx = ctx.reading_as(result)  # from here on, inputs are read as the chosen model reads them
    # Validation metrics and the abstention threshold describe the model as selected; only then
    # may it learn those rows.
    held_out = ctx.predict(result.model, "validation") if len(splits.validation) else None
    validation = None
    if held_out is not None:
        validation = evaluate_predictions(
            ctx.label_ids("validation"), held_out.probabilities, splits.labels, config.normal_label
        )
    open_set = fit_version_open_set(ctx, result, held_out)
    point = choose_configured_operating_point(ctx, held_out, result)
    result.finalize()
    apply_operating_point(result, ctx, point)
    test = evaluate_split(result, ctx, "test")
    metadata = {
        "strategy": result.strategy,
        "modality": modality.name,
        "base_model": config.base_model,
        "data_fingerprint": splits.fingerprint,
        "parent_version": config.parent_version or _production_version(registry, config.name),
        "test_accuracy": round(test.accuracy, 4),
        "test_macro_f1": round(test.macro_f1, 4),
        "test_set_fingerprint": splits.test_set.get("fingerprint"),
    }
    adaptation = result.details.get("adaptation")
    if adaptation:  # lineage: the parent above, and what this version adapted to
        metadata["adaptation"] = {k: adaptation[k] for k in ("method", "base_strategy", "target")}

    def write(directory: Path) -> dict[str, Any]:
        manifest = write_version(directory, ctx, result, test, validation, ladder, metadata)
        if open_set is not None:
            open_set[0].save(directory, open_set[1])
            manifest["open_set"] = asdict(open_set[0])
        return manifest

    if not is_main_process():  # under `accelerate launch`, one process registers
        return TrainOutcome(None, test, validation, ladder, splits.report.warnings())
    version = registry.register(config.name, metadata, write)
    if promote and version.stage != "production":
        version = registry.promote(version.tag, reason="requested at training time")
    return TrainOutcome(version, test, validation, ladder, splits.report.warnings())


def load_splits(data_path: Path, config: TrainingConfig, modality: Modality) -> DatasetSplits:
    """The train, validation and test splits ``config`` asks for, its ``oos_label`` and
    ``normal_label`` checked, and with ``label_name_examples`` each label's name as a training row.

    Raises:
        DataError: the data is unusable, or a configured label is not one of its labels.
        ConfigError: ``label_name_examples`` on images.
    """
    data, test = modality.load_frames(data_path, config.test_file)
    splits = split_frames(
        data,
        test,
        validation_fraction=0.0 if config.selection == "cv" else config.validation_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        source=str(data_path),
        test_source=str(config.test_file) if config.test_file is not None else None,
        column=modality.column,
        group_column=config.group_column,
    )
    for key in ("oos_label", "normal_label"):
        label = getattr(config, key)
        if label is not None and label not in splits.labels:
            raise DataError(
                f"{key} {label!r} is not a label of the data; expected one of {splits.labels[:20]} "
                f"or no {key}."
            )
    if config.label_name_examples:
        splits = add_label_name_rows(splits, modality.name)
    return splits


def fit_version_open_set(
    ctx: TrainContext, result: StrategyResult, validation: Predictions | None
) -> tuple[OpenSet, np.ndarray] | None:
    """The selected model's abstention threshold, on held-out rows it has not trained on, and the
    training embeddings its distance score reads (None without held-out rows).

    The held-out rows are the validation split's, or under ``selection: cv`` the training rows
    scored out of fold (their distances then leave each row itself out, or its whole group). The
    embeddings are a sample past ``open_set_reference_rows``."""
    if validation is None and result.out_of_fold is None:
        return None
    if result.strategy in ("baseline", "head"):  # a frozen encoder: its embeddings are cached
        train = ctx.frozen_embeddings("train")
    else:
        train = ctx.predict(result.model, "train", progress="embedding train (open-set reference)").embeddings
    cfg = ctx.config
    kept = sample_open_set_rows(ctx.label_ids("train"), cfg.open_set_reference_rows, cfg.seed)
    reference = train[kept]
    groups = None  # only the leave-one-out distances of cross-validated selection read the groups
    if result.out_of_fold is not None:
        held_out = (result.out_of_fold, train, ctx.label_ids("train"))
        groups = group_ids(ctx.splits.train) if has_groups(ctx.splits.train) else None
    else:
        assert validation is not None
        held_out = (validation.probabilities, validation.embeddings, ctx.label_ids("validation"))
    open_set = fit_open_set(
        reference,
        *held_out,
        cfg.abstain_max_accuracy_loss,
        cfg.oos_label,
        leave_one_out=result.out_of_fold is not None,
        groups=groups,
        reference_rows=kept,
    )
    return None if open_set is None else (open_set, reference)


def is_main_process() -> bool:
    """True outside distributed runs and on the main process of an `accelerate launch` run."""
    from accelerate import PartialState

    return bool(PartialState().is_main_process)


def _production_version(registry: ModelRegistry, name: str) -> str | None:
    try:
        return registry.get(f"{name}:production").version
    except VersionNotFoundError:
        return None


def write_version(
    directory: Path,
    ctx: TrainContext,
    result: StrategyResult,
    test: EvaluationResult,
    validation: EvaluationResult | None,
    ladder: list[dict[str, Any]],
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Write every file of a version into ``directory``; return its manifest."""
    cfg, splits = ctx.config, ctx.splits
    save_classifier(result.model.cpu(), ctx.processor, directory / MODEL_DIR)
    result.model.to(ctx.device)
    write_json(directory / LABELS_FILE, splits.labels)
    write_json(directory / CONFIG_FILE, cfg.model_dump(mode="json"))
    metrics = {
        "test": test.to_dict(),
        "validation": validation.to_dict() if validation else None,
        "ladder": ladder,
    }
    write_json(directory / METRICS_FILE, metrics)
    write_splits(directory, {"train": splits.train, "validation": splits.validation, "test": splits.test})
    write_reference_profile(build_profile(ctx, result, splits), directory / PROFILE_FILE)
    manifest = {
        **metadata,
        "labels": splits.labels,
        "train_seconds": round(result.train_seconds, 2),
        "trainable_params": result.trainable_params,
        "details": result.details,
        "data_report": {**splits.report.__dict__, "warnings": splits.report.warnings()},
        "test_set": splits.test_set,
        "rows": {
            "train": len(splits.train),
            "validation": len(splits.validation),
            "test": len(splits.test),
        },
        "max_length": cfg.max_length,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": str(ctx.device),
        },
    }
    summary = {k: manifest[k] for k in ("strategy", "base_model", "data_fingerprint", "parent_version")}
    summary["test set"] = describe_test_set(splits.test_set)  # what the test metrics below come from
    if manifest.get("adaptation"):
        summary["adapted"] = describe_adaptation(manifest["adaptation"])
    summary["trainable params"] = f"{result.trainable_params:,}"
    summary["train seconds"] = manifest["train_seconds"]
    point = result.details.get("operating_point")
    if point:
        summary["operating point"] = describe_operating_point(point)
    title = f"{cfg.name} ({result.strategy})"
    (directory / "report.md").write_text(render_markdown(title, summary, test, ladder), encoding="utf-8")
    examples = None
    if ctx.modality.name == "image":
        predicted = ctx.predict(result.model, "test").predicted
        examples = worst_confusions(ctx.label_ids("test"), predicted, splits.labels, ctx.inputs("test"))
    report = render_html(title, summary, test, ladder, examples)
    (directory / "report.html").write_text(report, encoding="utf-8")
    return manifest


def build_profile(ctx: TrainContext, result: StrategyResult, splits: DatasetSplits) -> Any:
    """The reference profile: the model's outputs on a sample of held-out inputs.

    Rows the shipped model never trained on, because a model is more confident on the rows it was
    fitted on: a profile of training rows would make live confidence and entropy look drifted when
    they are not, and the accuracy estimate calibrated on it too high. That is validation + test,
    or the test split alone when the head was refitted on train + validation after selection (on
    BANKING77 such a head answered 99.7% of its validation rows and 91.8% of its test rows
    rightly). With fewer than MIN_HELD_OUT of those, validation + test, then training rows.

    An adapted version also profiles a sample of the target inputs it adapted to, unlabelled: the
    domain it now serves is what the monitor compares live traffic with, or the drift it was
    adapted to would alarm (and be adapted to) again at every check.
    """
    held_out = pd.concat([splits.validation, splits.test], ignore_index=True)
    unseen = splits.test if result.details.get("refit_on_validation") else held_out
    source = next((rows for rows in (unseen, held_out) if len(rows) >= MIN_HELD_OUT), splits.train)
    if source is splits.train:
        logger.warning(
            "%d held-out rows (< %d): the drift reference profile is built from training rows, on "
            "which the model is overconfident; confidence and entropy may read as drifted on live traffic",
            len(held_out), MIN_HELD_OUT,
        )  # fmt: skip
    elif source is not unseen:
        logger.warning(
            "%d test rows (< %d): the drift reference profile also holds the validation rows the head "
            "was refitted on, on which the model is overconfident; hold out more rows (test_fraction)",
            len(splits.test), MIN_HELD_OUT,
        )  # fmt: skip
    rows = [sample_reference_rows(source, ctx.config.profile_rows, ctx.config.seed)]
    if result.details.get("adaptation"):
        target = load_target(ctx).assign(label=None)
        rows.append(sample_reference_rows(target, ctx.config.profile_rows, ctx.config.seed))
    return pd.concat([_profile_rows(ctx, result, sample) for sample in rows], ignore_index=True)


def _profile_rows(ctx: TrainContext, result: StrategyResult, sample: pd.DataFrame) -> pd.DataFrame:
    """Profile rows of ``sample``: the model's outputs (and, for images, their descriptors)."""
    predictions = predict(
        result.model,
        ctx.processor,
        ctx.modality.inputs(sample),
        batch_size=ctx.config.eval_batch_size,
        device=ctx.device,
        mixed_precision=ctx.config.mixed_precision,
    )
    profile = build_reference_profile(sample, predictions, ctx.splits.labels, ctx.modality.column)
    if has_groups(sample):  # the novelty feature's reference leaves each row's group out
        profile[GROUP] = sample[GROUP].to_numpy()
    if ctx.modality.name == "image":  # what the drift check compares live images' descriptors with
        described = [
            describe_image(decode_image(p.read_bytes(), str(p))) for p in ctx.modality.inputs(sample)
        ]
        profile = pd.concat([profile, pd.DataFrame(described, columns=list(IMAGE_DESCRIPTORS))], axis=1)
    return profile
