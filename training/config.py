"""The training stage's one typed config, loaded from a file, the environment and overrides.

Precedence, highest first: explicit overrides (CLI flags), environment variables
(``REFIT_TRAIN_<KEY>``), the config file (YAML or TOML), the defaults below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from training.shared_settings import StageSettings, load_settings

ORIENTATIONS = (1, 8)  # an image as it is, or every flip and quarter turn of it (the dihedral group)

Strategy = Literal[
    "baseline", "head", "partial", "lora", "full", "bn-adapt", "tent", "self-train", "dann", "tapt",
    "spelling", "auto",
]  # fmt: skip
LADDER_STRATEGIES: tuple[str, ...] = ("baseline", "head", "partial", "lora", "full")
# Trained on the labelled data (`adapt_base`), then adapted to unlabelled `target_file` inputs.
ADAPTATION_STRATEGIES: tuple[str, ...] = ("bn-adapt", "tent", "self-train", "dann", "tapt", "spelling")
STRATEGIES: tuple[str, ...] = (*LADDER_STRATEGIES, *ADAPTATION_STRATEGIES, "auto")
FINETUNE_STRATEGIES: tuple[str, ...] = ("partial", "lora", "full")
CV_STRATEGIES: tuple[str, ...] = ("baseline", "head")  # the ones `selection: cv` can choose among

# Learning rates that worked for MiniLM-sized encoders; `learning_rate` overrides them.
DEFAULT_LEARNING_RATES: dict[str, float] = {"partial": 2e-4, "lora": 1e-3, "full": 8e-5}


class TrainingConfig(StageSettings):
    """Everything one training run needs; saved with the version it produces."""

    model_config = SettingsConfigDict(env_prefix="REFIT_TRAIN_", extra="forbid")

    name: str = Field("refit-classifier", pattern=r"^[a-z0-9][a-z0-9_.-]*$")  # registry model name
    # None: the modality's default; texts: "minilm" (bundled), a local HF directory or a hub id;
    # images: "efficientnet-lite0" (bundled), "efficientnet-lite1|2", or a local HF vision model
    base_model: str | None = None
    # auto: images for a folder of class folders or a table with `image_column` and no `text_column`
    modality: Literal["auto", "text", "image"] = "auto"
    # baseline, head, partial, lora, full, auto (the ladder), or an adaptation: bn-adapt, tent,
    # self-train, dann (adversarial), tapt (texts: language-model pretraining on the target first),
    # spelling (texts: words the model cannot read corrected to words of the texts one edit away)
    strategy: Strategy = "auto"
    text_column: str = "text"  # column of the input texts in the data file(s)
    label_column: str = "label"  # column of the labels
    image_column: str = "path"  # images listed in a table: column of paths relative to the table
    image_size: int | None = Field(None, ge=32, le=1024)  # pixels a side; None: the base model's own
    min_image_side: int = Field(32, ge=1)  # smaller images are rejected
    max_image_pixels: int = Field(40_000_000, ge=1)  # larger images are rejected (decompression bombs)
    augment: bool = True  # images: random flips, small rotations and crops, brightness/contrast
    # images: 8 averages the encoder's features over each image's flips and quarter turns, for
    # images without an up (surface defects, micrographs); it costs 8x the compute per image read
    # (fine-tuning steps see each image in one orientation drawn at random)
    orientations: int = 1
    # images: the no-defect label; the missed-defect rate is the share of other images predicted as it
    normal_label: str | None = None
    # with normal_label: lower the normal class's logit until at most this share of the defective
    # held-out images is predicted normal: validation images, or with selection cv every training
    # image by the fold that held it out (training/operating_point.py); None: plain argmax
    max_missed_defect_rate: float | None = Field(None, ge=0.0, le=1.0)
    test_file: Path | None = None  # held-out test data; else a stratified split of DATA
    # a data column naming rows that belong together (a part photographed several times, one
    # customer's tickets): validation, test and cross-validation folds take whole groups
    group_column: str | None = None
    # adaptation strategies: unlabelled inputs of the domain to adapt to (a table with the input
    # column, or a folder of images)
    target_file: Path | None = None
    target_window: str | None = None  # which inference-log window target_file holds (lineage)
    # spelling: a saved corrector's lexicon (its spelling.json) to keep, the target's own words
    # joining it; a retrain on labels of a spelling version keeps its corrections this way
    spelling_lexicon: Path | None = None
    adapt_base: Literal["head", "partial", "lora", "full"] = "head"  # trained on the labelled data first
    bn_layers: Literal["stem", "early", "all"] = "stem"  # BatchNorm layers whose statistics adapt
    bn_mix: float = Field(1.0, ge=0.0, le=1.0)  # the target's share of an adapted layer's statistics
    adapt_epochs: int = Field(3, ge=1)  # tent, tapt: passes over the target; dann: over the source
    # tent: of the BatchNorm scales and shifts; dann: the top partial_layers and head; tapt: the encoder
    adapt_learning_rate: float = Field(1e-4, gt=0)
    pseudo_label_threshold: float = Field(0.9, gt=0.0, le=1.0)  # self-train: the least confidence kept
    validation_fraction: float = Field(0.1, ge=0.0, lt=0.5)  # per label, for selection and early stopping
    # holdout: choose on the validation split; cv: k-fold cross-validation on the training rows
    # (no validation split is carved: for a few rows per label; baseline and head only)
    selection: Literal["holdout", "cv"] = "holdout"
    cv_folds: int = Field(5, ge=2)  # folds of `selection: cv` (fewer when a label has fewer rows)
    test_fraction: float = Field(0.2, ge=0.0, lt=0.5)  # per label, when there is no test_file
    seed: int = 42  # of the splits, initialisation and data order
    max_length: int = Field(128, ge=8, le=4096)  # tokens; longer texts are truncated
    normalize_embeddings: bool = True  # L2-normalise mean-pooled embeddings before the head
    batch_size: int = Field(32, ge=1)  # training examples per step
    eval_batch_size: int = Field(128, ge=1)  # texts per forward pass when embedding or evaluating
    gradient_accumulation_steps: int = Field(1, ge=1)  # batches per optimiser step
    epochs: int = Field(10, ge=1)  # upper bound; early stopping usually ends sooner
    learning_rate: float | None = Field(None, gt=0)  # None: the strategy's default
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)  # share of the steps with a rising learning rate
    weight_decay: float = Field(0.01, ge=0.0)  # AdamW
    early_stopping_patience: int = Field(3, ge=1)  # epochs without validation macro-F1 gain
    partial_layers: int = Field(2, ge=1)  # top encoder layers unfrozen by `partial`
    lora_r: int = Field(16, ge=1)  # rank of the LoRA update
    lora_alpha: int = Field(32, ge=1)  # LoRA scaling (alpha / r)
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0)  # dropout on the LoRA input
    class_weighting: Literal["balanced", "none"] = "balanced"  # loss weights inverse to label counts
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # 0.1 lost 1-4 points at 10/intent (dev split)
    # fine-tuning: weight of a supervised contrastive loss on the embeddings beside cross-entropy
    # (0: off); batches then hold each label's rows together (4 of each of batch_size / 4 labels;
    # with fewer labels, each an equal share)
    contrastive_weight: float = Field(0.0, ge=0.0)
    contrastive_temperature: float = Field(0.1, gt=0.0)  # of the contrastive loss's similarities
    label_name_examples: bool = False  # texts: each label's name (`_` as a space) as one more training row
    refit_head: bool = True  # refit linear probes on train + validation once C is chosen
    reprobe_after_finetune: bool = True  # replace a fine-tuned head by a probe on its features
    calibrate: bool = True  # temperature-scale logits on validation data (folded into the head)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16/fp16 on CUDA
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    # the rungs of `auto`, in order
    auto_ladder: list[str] = Field(default_factory=lambda: ["baseline", "head", "lora", "full"])
    auto_target_macro_f1: float = Field(0.97, gt=0.0, le=1.0)  # stop climbing once reached
    auto_min_gain: float = Field(0.005, ge=0.0)  # stop when a rung gains less than this
    profile_rows: int = Field(5000, ge=10)  # rows of training data kept as the drift reference
    # open-set answers: the abstention threshold may cost this much validation accuracy
    abstain_max_accuracy_loss: float = Field(0.02, ge=0.0, lt=1.0)
    # training rows the open-set distance reads on every request (a per-label sample past this)
    open_set_reference_rows: int = Field(8192, ge=10)
    oos_label: str | None = None  # a label of the data that means "out of scope": predicting it abstains
    parent_version: str | None = None  # lineage; defaults to the current production version

    @model_validator(mode="after")
    def _check_selection(self) -> TrainingConfig:
        rungs = self.auto_ladder if self.strategy == "auto" else [self.strategy]
        tuned = [s for s in rungs if s not in CV_STRATEGIES]
        if self.selection == "cv" and tuned:
            raise ValueError(
                f"selection 'cv' covers the strategies {list(CV_STRATEGIES)}; found {tuned} (fine-tuning "
                "stops early on a validation split). Use selection 'holdout', or a ladder of "
                "baseline and head: --set auto_ladder=baseline,head"
            )
        return self

    @model_validator(mode="after")
    def _check_operating_point(self) -> TrainingConfig:
        if self.max_missed_defect_rate is not None and self.normal_label is None:
            raise ValueError(
                "max_missed_defect_rate needs normal_label (the no-defect class); found none. "
                "Set both, e.g. --set normal_label=free --set max_missed_defect_rate=0.02"
            )
        return self

    @model_validator(mode="after")
    def _check_orientations(self) -> TrainingConfig:
        if self.orientations not in ORIENTATIONS:
            raise ValueError(
                f"orientations must be 1 (images as they are) or 8 (every flip and quarter turn); "
                f"found {self.orientations}"
            )
        return self

    @model_validator(mode="after")
    def _check_ladder(self) -> TrainingConfig:
        bad = [s for s in self.auto_ladder if s not in LADDER_STRATEGIES]
        if bad or not self.auto_ladder:
            raise ValueError(
                f"auto_ladder must be a non-empty list of {list(LADDER_STRATEGIES)}; found {bad or '[]'}"
            )
        return self

    @model_validator(mode="after")
    def _check_target(self) -> TrainingConfig:
        adapting = self.strategy in ADAPTATION_STRATEGIES
        if adapting and self.target_file is None:
            raise ValueError(
                f"strategy {self.strategy!r} adapts to unlabelled inputs of the target domain; found "
                "no target_file. Pass --set target_file=<table or folder of images>"
            )
        if not adapting and self.target_file is not None:
            raise ValueError(
                f"target_file is read by the adaptation strategies {list(ADAPTATION_STRATEGIES)}; "
                f"strategy {self.strategy!r} would ignore it. Choose one of them or drop target_file."
            )
        if self.spelling_lexicon is not None and self.strategy != "spelling":
            raise ValueError(
                f"spelling_lexicon is read by strategy 'spelling' only; found strategy {self.strategy!r}"
            )
        return self

    def learning_rate_for(self, strategy: str) -> float:
        """The learning rate a fine-tuning strategy uses: the configured one or its default."""
        return self.learning_rate or DEFAULT_LEARNING_RATES[strategy]


def load_training_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainingConfig:
    """Build the training config from a file, ``REFIT_TRAIN_*`` variables and explicit overrides.

    Raises:
        ConfigError: an unknown key, an unreadable file or an invalid value.
    """
    return load_settings(TrainingConfig, path, overrides)
