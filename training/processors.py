"""Processors turn a batch of raw inputs (texts, or image files and bytes) into model input tensors.

One per modality, with one interface: the order to batch inputs in, the tensors of a batch, and
how to save and reload it with the model. Everything that runs a model goes through one.

Loading one does not import torch: the service's ONNX workers tokenise and decode with a
processor and never run torch, whose import costs each worker about a second and 190 MB.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from training.errors import ModelLoadError
from training.images import ImageLimits, Preprocessing, augment_image, decode_image, to_pixels
from training.spelling import SpellingCorrector, load_spelling

if TYPE_CHECKING:
    import torch

PREPROCESSING_FILE = "preprocessing.json"
CLASSIFIER_FILE = "classifier.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


class Processor(Protocol):
    """What a modality's inputs need to become a model's input tensors."""

    input_names: tuple[str, ...]  # the model's (and the ONNX graph's) inputs, in order
    dynamic_axes: dict[str, dict[int, str]]  # per input, the axes that vary between batches

    def example(self) -> tuple[torch.Tensor, ...]:
        """A small batch to trace the model with (an export)."""
        ...

    def order(self, inputs: Sequence[Any]) -> np.ndarray:
        """The order to batch ``inputs`` in (similar inputs together); a permutation of indices."""
        ...

    def encode(
        self, inputs: Sequence[Any], augment: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The model's input tensors for a batch (a random training view when ``augment``)."""
        ...

    def save(self, directory: Path) -> None:
        """Write what :func:`training.modality.load_saved_processor` reads back."""
        ...


class TextProcessor:
    """A tokenizer with its maximum length: texts -> (input_ids, attention_mask); with a spelling
    corrector (the ``spelling`` adaptation), texts are corrected before they are tokenized."""

    input_names: tuple[str, ...] = ("input_ids", "attention_mask")

    def __init__(self, tokenizer: Any, max_length: int, spelling: SpellingCorrector | None = None) -> None:
        self.dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in self.input_names}
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.spelling = spelling

    def with_spelling(self, spelling: SpellingCorrector) -> TextProcessor:
        """This processor with ``spelling`` correcting texts before the tokenizer."""
        return TextProcessor(self.tokenizer, self.max_length, spelling)

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """The texts the tokenizer reads: corrected when there is a corrector."""
        if self.spelling is None:
            return list(texts)
        return [self.spelling.correct(text) for text in texts]

    def example(self) -> tuple[torch.Tensor, ...]:
        """Two texts of different lengths: the traced graph keeps the padded (masked) path."""
        return self.encode(["an example input", "a second, longer example input"])

    def order(self, inputs: Sequence[Any]) -> np.ndarray:
        """Texts of similar length together, to cut padding."""
        return np.argsort([len(t) for t in inputs], kind="stable")

    def encode(
        self, inputs: Sequence[Any], augment: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Padded, truncated token ids and mask (texts are not augmented)."""
        batch = self.tokenizer(
            self.prepare(inputs),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    def save(self, directory: Path) -> None:
        """Save the tokenizer and the spelling corrector, if any."""
        self.tokenizer.save_pretrained(directory)
        if self.spelling is not None:
            self.spelling.save(directory)


def rewritten_inputs(processor: Any, inputs: Sequence[Any]) -> np.ndarray:
    """Which ``inputs`` ``processor`` reads other than they are: texts its spelling corrector
    changes (an image is read as it is)."""
    if not isinstance(processor, TextProcessor) or processor.spelling is None:
        return np.zeros(len(inputs), dtype=bool)
    return np.array([fixed != text for fixed, text in zip(processor.prepare(inputs), inputs, strict=True)])


class ImageProcessor:
    """Decode, check, convert and resize images: files or bytes -> pixel_values (n, 3, size, size)."""

    input_names: tuple[str, ...] = ("pixel_values",)

    def __init__(self, preprocessing: Preprocessing, limits: ImageLimits | None = None) -> None:
        self.dynamic_axes = {"pixel_values": {0: "batch"}}
        self.preprocessing = preprocessing
        self.limits = limits or ImageLimits()

    def example(self) -> tuple[torch.Tensor, ...]:
        """Two mid-grey images."""
        import torch

        size = self.preprocessing.size
        return (torch.zeros((2, 3, size, size), dtype=torch.float32),)

    def order(self, inputs: Sequence[Any]) -> np.ndarray:
        """Input order: every image becomes the same size."""
        return np.arange(len(inputs))

    def read(self, item: Any) -> Any:
        """A decoded RGB image from a path or bytes."""
        if isinstance(item, bytes | bytearray):
            return decode_image(bytes(item), "image", self.limits)
        return decode_image(Path(item).read_bytes(), str(item), self.limits)

    def encode(
        self, inputs: Sequence[Any], augment: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Pixel values, float32; with ``augment`` each image is a random inspection-style view."""
        import torch

        return (torch.from_numpy(self.pixels(inputs, augment, rng)),)

    def pixels(
        self, inputs: Sequence[Any], augment: bool = False, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """What :meth:`encode` returns as a tensor, as an array (n, 3, size, size) float32."""
        images = [self.read(item) for item in inputs]
        if augment:
            rng = rng or np.random.default_rng()
            images = [augment_image(image, rng) for image in images]
        return np.stack([to_pixels(image, self.preprocessing) for image in images])

    def save(self, directory: Path) -> None:
        """Write the preprocessing (size, mean, std) as JSON."""
        spec = {
            "size": self.preprocessing.size,
            "mean": self.preprocessing.mean,
            "std": self.preprocessing.std,
        }
        (directory / PREPROCESSING_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")


def read_preprocessing(directory: Path) -> Preprocessing:
    """The preprocessing an :class:`ImageProcessor` saved in ``directory``."""
    spec = json.loads((directory / PREPROCESSING_FILE).read_text(encoding="utf-8"))
    return Preprocessing(size=int(spec["size"]), mean=tuple(spec["mean"]), std=tuple(spec["std"]))


def load_tokenizer(path_or_id: str) -> Any:
    """Load the fast tokenizer that belongs to an encoder.

    A saved tokenizer is loaded by the fast class its ``tokenizer_config.json`` names, as
    ``AutoTokenizer`` would choose it: ``AutoTokenizer`` itself reads the model's config through
    modules that import torch, which a service worker running ONNX never needs.
    """
    import transformers

    try:
        for name in _named_tokenizer_classes(Path(path_or_id)):
            found = getattr(transformers, name, None)
            if isinstance(found, type) and issubclass(found, transformers.PreTrainedTokenizerFast):
                return found.from_pretrained(path_or_id)
        return transformers.AutoTokenizer.from_pretrained(path_or_id)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load a tokenizer from {path_or_id!r}: {exc}") from exc


def _named_tokenizer_classes(directory: Path) -> list[str]:
    """The fast class, then the class, that a saved tokenizer's config names (none for a hub id)."""
    config = directory / TOKENIZER_CONFIG
    if not config.is_file():
        return []
    named = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
    return [f"{named.removesuffix('Fast')}Fast", named] if isinstance(named, str) else []


def load_processor(directory: Path) -> Processor:
    """The processor saved with a classifier (no weights are read).

    Raises:
        ModelLoadError: its files are missing or corrupt.
    """
    try:
        spec = json.loads((directory / CLASSIFIER_FILE).read_text(encoding="utf-8"))
        if spec.get("modality", "text") == "image":
            return ImageProcessor(read_preprocessing(directory))
        tokenizer = load_tokenizer(str(directory))
        spelling = load_spelling(directory, tokenizer)
        return TextProcessor(tokenizer, int(spec.get("max_length") or 128), spelling)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"Saved processor in {directory} cannot be loaded: {exc}") from exc
