"""What every strategy of one training run shares: config, data, modality, processor, device, caches."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from training.config import TrainingConfig
from training.data import DatasetSplits
from training.inference import choose_device, predict
from training.modality import Modality, TextModality
from training.model import Classifier
from training.processors import Processor


@dataclass
class StrategyResult:
    """A trained classifier (weights merged, ready to save) and how it was obtained."""

    strategy: str
    model: Classifier
    train_seconds: float
    trainable_params: int
    details: dict[str, Any] = field(default_factory=dict)  # history, temperature, parity, ...
    # A head refitted on train + validation, installed by `finalize` only after the model has
    # been chosen and scored: selection must never see rows the candidate trained on.
    refit_head: tuple[np.ndarray, np.ndarray] | None = None
    # Under `selection: cv`: each training row's probabilities from the fold that did not train on
    # it (n, labels); selection, calibration and the abstention threshold read these.
    out_of_fold: np.ndarray | None = None
    # Its own processor, when it reads inputs otherwise than the run's (spelling correction).
    processor: Processor | None = None

    def finalize(self) -> None:
        """Install the refitted head, if there is one (after selection and validation metrics)."""
        if self.refit_head is None:
            return
        weight, bias = self.refit_head
        with torch.no_grad():
            self.model.head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.model.head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        self.refit_head = None
        self.details["refit_on_validation"] = True


@dataclass
class LinearProbe:
    """A fitted probe: the head's weight (labels, hidden) and bias (labels,), and how C was chosen."""

    weight: np.ndarray
    bias: np.ndarray
    c: float
    log_loss_by_c: dict[float, float]  # on the held-out rows the choice was made on
    chosen_on: str  # "validation" or "cv"
    refit: tuple[np.ndarray, np.ndarray] | None = None  # refitted on train + validation
    out_of_fold_logits: np.ndarray | None = None  # (train rows, labels), under cv
    cv_folds: int | None = None

    def describe(self) -> dict[str, Any]:
        """The choice, for the version's manifest."""
        details: dict[str, Any] = {"C": self.c, f"{self.chosen_on}_log_loss_by_C": self.log_loss_by_c}
        if self.cv_folds is not None:
            details["cv_folds"] = self.cv_folds
        return details


@dataclass
class TrainContext:
    """Shared state of one run; frozen-encoder embeddings and the linear probe are computed once."""

    config: TrainingConfig
    splits: DatasetSplits
    modality: Modality
    processor: Processor
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    frozen: dict[str, np.ndarray] = field(default_factory=dict)  # split name -> embeddings
    probe: LinearProbe | None = None  # fitted once, read by `head` and the fine-tuning strategies

    @classmethod
    def create(
        cls, config: TrainingConfig, splits: DatasetSplits, modality: Modality | None = None
    ) -> TrainContext:
        """A context for ``config`` on ``splits`` (texts unless ``modality`` says otherwise), with
        the base model's processor loaded once."""
        modality = modality or TextModality(config)
        processor = modality.load_processor(cls.base_model_of(config, modality))
        return cls(config, splits, modality, processor, device=choose_device(config.device))

    @staticmethod
    def base_model_of(config: TrainingConfig, modality: Modality) -> str:
        """The configured base model, or the modality's default."""
        return config.base_model or modality.default_base_model

    @property
    def base_model(self) -> str:
        """The base model this run starts from."""
        return self.base_model_of(self.config, self.modality)

    def label_ids(self, split: str) -> np.ndarray:
        """Label indices (n,) of a split's rows."""
        index = {label: i for i, label in enumerate(self.splits.labels)}
        frame = getattr(self.splits, split)
        return np.array([index[label] for label in frame["label"]], dtype=np.int64)

    def inputs(self, split: str) -> list[Any]:
        """The inputs of a split, as the processor reads them (texts, image files)."""
        return self.modality.inputs(getattr(self.splits, split))

    def fresh_model(self) -> Classifier:
        """A new classifier on the pretrained encoder, on the run's device."""
        encoder = self.modality.load_encoder(self.base_model)
        model = Classifier(
            encoder, len(self.splits.labels), self.config.normalize_embeddings, modality=self.modality.name
        )
        return model.to(self.device)

    def frozen_embeddings(self, split: str) -> np.ndarray:
        """Pretrained-encoder embeddings of a split, computed once per run."""
        if split not in self.frozen:
            model = self.fresh_model()
            # Strategies read train and validation together; test only when asked for.
            for name in {split} | ({"train", "validation"} if split != "test" else set()):
                if name not in self.frozen:
                    self.frozen[name] = self.predict(model, name, progress=f"embedding {name}").embeddings
            del model
        return self.frozen[split]

    def reading_as(self, result: StrategyResult) -> TrainContext:
        """This context reading as ``result`` does: with its own processor, if it has one."""
        return self if result.processor is None else self.reading_with(result.processor)

    def reading_with(self, processor: Processor) -> TrainContext:
        """This context reading its inputs through ``processor`` (the embeddings and probe, read
        through the run's processor, left behind)."""
        return replace(self, processor=processor, frozen={}, probe=None)

    def predict(self, model: Classifier, split: str, progress: str | None = None) -> Any:
        """Predictions of ``model`` on a split (with a progress bar when ``progress`` is given)."""
        return predict(
            model,
            self.processor,
            self.inputs(split),
            batch_size=self.config.eval_batch_size,
            device=self.device,
            mixed_precision=self.config.mixed_precision,
            progress=progress,
        )
