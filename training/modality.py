"""What differs between texts and images in training, behind one small interface.

A modality reads and checks labelled data, names the frame column holding the inputs, loads
the pretrained encoder and makes the processor. Training, the registry and everything
downstream read the modality from the version; a user names it at most once (``--set
modality=image``), and never when the data says it (a folder of class folders is images).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from torch import nn

from training.blobs import BlobStore
from training.config import TrainingConfig
from training.data import load_dataset, load_unlabelled_texts
from training.images import ImageLimits
from training.processors import ImageProcessor, Processor, TextProcessor
from training.tables import read_table

logger = logging.getLogger(__name__)


class Modality(Protocol):
    """The seam between a modality's inputs and the one training path."""

    name: str  # "text" or "image", recorded in every version
    column: str  # the frame column holding the inputs
    default_base_model: str

    def load_frames(self, data: Path, test: Path | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """Labelled data (columns ``column``, ``label``, ...) and the optional test data, checked."""
        ...

    def load_unlabelled(self, data: Path) -> pd.DataFrame:
        """Unlabelled inputs of a domain to adapt to (column ``column``), checked."""
        ...

    def inputs(self, frame: pd.DataFrame) -> list[Any]:
        """What the processor reads for each row of a frame."""
        ...

    def load_encoder(self, base_model: str) -> nn.Module:
        """The pretrained encoder."""
        ...

    def load_processor(self, base_model: str) -> Processor:
        """The processor that belongs to the pretrained encoder."""
        ...

    def describe_truncation(self, processor: Processor, frame: pd.DataFrame) -> str:
        """A warning when ``processor`` reads only part of many of ``frame``'s inputs; else empty."""
        ...

    def settle(self, config: TrainingConfig) -> TrainingConfig:
        """``config`` with what depends on the encoder made to fit it (see each modality)."""
        ...


@dataclass
class TextModality:
    """Texts in a CSV, TSV, JSONL or Parquet file; a Hugging Face encoder and its tokenizer."""

    config: TrainingConfig
    name: str = "text"
    column: str = "text"
    default_base_model: str = "minilm"

    def load_frames(self, data: Path, test: Path | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """Texts and labels (and groups) from the configured columns; a test file's groups are
        read when it has the column."""
        cfg = self.config
        columns = (cfg.text_column, cfg.label_column, cfg.group_column)
        frame = load_dataset(data, *columns)  # first: its columns are the ones to fix first
        held_out = load_dataset(test, *columns, group_required=False, is_test_file=True) if test else None
        return frame, held_out

    def load_unlabelled(self, data: Path) -> pd.DataFrame:
        """Texts from the configured column."""
        return load_unlabelled_texts(data, self.config.text_column)

    def inputs(self, frame: pd.DataFrame) -> list[Any]:
        """The texts."""
        return list(frame["text"])

    def load_encoder(self, base_model: str) -> nn.Module:
        """A Hugging Face encoder without its pooler."""
        from training.model import load_encoder, resolve_base_model

        return load_encoder(resolve_base_model(base_model))

    def load_processor(self, base_model: str) -> Processor:
        """The encoder's tokenizer, truncating at ``max_length``."""
        from training.model import resolve_base_model
        from training.processors import load_tokenizer

        return TextProcessor(load_tokenizer(resolve_base_model(base_model)), self.config.max_length)

    def settle(self, config: TrainingConfig) -> TrainingConfig:
        """``config`` with ``max_length`` within what its encoder reads: a default beyond it
        becomes the encoder's limit; a ``max_length`` asked for beyond it is refused.

        Raises:
            ConfigError: ``max_length`` was set to more than the encoder reads.
        """
        from training.model import resolve_base_model
        from training.processors import load_tokenizer
        from training.truncation import check_max_length, encoder_max_tokens

        name = config.base_model or self.default_base_model
        path = resolve_base_model(name)
        limit = encoder_max_tokens(load_tokenizer(path), path)
        if limit is None or config.max_length <= limit:
            return config
        if "max_length" in config.model_fields_set:
            check_max_length(config.max_length, limit, name)
        logger.info("%s reads at most %d tokens: max_length %d -> %d", name, limit, config.max_length, limit)
        return config.model_copy(update={"max_length": limit})

    def describe_truncation(self, processor: Processor, frame: pd.DataFrame) -> str:
        """A warning when many of ``frame``'s texts are longer than ``processor`` reads."""
        from training.model import resolve_base_model
        from training.truncation import describe_truncation, encoder_max_tokens

        if not isinstance(processor, TextProcessor):
            return ""
        name = self.config.base_model or self.default_base_model
        limit = encoder_max_tokens(processor.tokenizer, resolve_base_model(name))
        return describe_truncation(processor, self.inputs(frame), limit, name, self.config.seed)


@dataclass
class ImageModality:
    """Images in class folders or listed in a CSV; EfficientNet-Lite or a local HF vision model."""

    config: TrainingConfig
    store: BlobStore
    name: str = "image"
    column: str = "image"
    default_base_model: str = "efficientnet-lite0"
    limits: ImageLimits = field(default_factory=ImageLimits)

    def load_frames(self, data: Path, test: Path | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """Images checked one by one and stored by content; test images must not be training images."""
        from training.image_data import attach_image_groups, load_image_dataset, reject_shared_images

        cfg = self.config

        def load(path: Path) -> pd.DataFrame:
            return load_image_dataset(
                path,
                self.store,
                image_column=cfg.image_column,
                label_column=cfg.label_column,
                limits=self.limits,
            )

        frame = attach_image_groups(load(data), cfg.group_column, data, required=True)
        if test is None:
            return frame, None
        held_out = attach_image_groups(load(test), cfg.group_column, test, required=False)
        reject_shared_images(frame, held_out, str(data), str(test))
        return frame, held_out

    def load_unlabelled(self, data: Path) -> pd.DataFrame:
        """Images checked one by one and stored by content, each once."""
        from training.image_data import load_unlabelled_images

        column = self.config.image_column
        return load_unlabelled_images(data, self.store, image_column=column, limits=self.limits)

    def inputs(self, frame: pd.DataFrame) -> list[Any]:
        """Paths of the stored images (the bytes the content keys name)."""
        return [self.store.path(key) for key in frame["image"]]

    def describe_truncation(self, processor: Processor, frame: pd.DataFrame) -> str:
        """Nothing: an image is resized whole, never cut."""
        return ""

    def settle(self, config: TrainingConfig) -> TrainingConfig:
        """``config`` as it is: nothing in it depends on the encoder."""
        return config

    def load_encoder(self, base_model: str) -> nn.Module:
        """An EfficientNet-Lite or HF vision encoder with global average pooling."""
        from training.vision import load_image_encoder

        return load_image_encoder(base_model, self.config.orientations)

    def load_processor(self, base_model: str) -> Processor:
        """Resizing and normalisation as the encoder was pretrained with."""
        from training.vision import native_preprocessing

        preprocessing = native_preprocessing(base_model)
        if self.config.image_size is not None:
            preprocessing = type(preprocessing)(self.config.image_size, preprocessing.mean, preprocessing.std)
        return ImageProcessor(preprocessing, self.limits)


def detect_modality(data: Path, config: TrainingConfig) -> str:
    """``image`` for a folder, or a table with the image column and without the text column."""
    if config.modality != "auto":
        return config.modality
    if Path(data).is_dir():
        return "image"
    if Path(data).is_file():
        columns = set(read_table(Path(data)).columns)
        if config.image_column in columns and config.text_column not in columns:
            return "image"
    return "text"


def create_modality(name: str, config: TrainingConfig, home: Path | None = None) -> Modality:
    """The modality called ``name`` (``text`` or ``image``); images are stored under ``home``."""
    if name == "image":
        from training.blobs import registry_images

        limits = ImageLimits(min_side=config.min_image_side, max_pixels=config.max_image_pixels)
        return ImageModality(config, registry_images(home), limits=limits)
    return TextModality(config)
