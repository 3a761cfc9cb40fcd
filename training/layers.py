"""Where an encoder's layers (or stages) and attention projections are, for `partial` and `lora`."""

from __future__ import annotations

from torch import nn

# Attention projection names across common encoder families (BERT, RoBERTa, DistilBERT, ViT, T5, ...).
ATTENTION_PROJECTIONS = (
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_lin", "k_lin", "v_lin"),
    ("q", "k", "v"),
)


def find_encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers (the ModuleList as long as num_hidden_layers),
    or of a convolutional network's stages (as many as its config's ``depths``: ResNet, ConvNeXt)."""
    config = encoder.config
    depth = int(getattr(config, "num_hidden_layers", 0) or len(getattr(config, "depths", None) or ()))
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(f"Cannot find the {depth} transformer layers of {type(encoder).__name__}")


def find_attention_projections(encoder: nn.Module) -> list[str]:
    """Names of the attention query/key/value Linear layers, for LoRA's ``target_modules``."""
    linear_names = {n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if isinstance(m, nn.Linear)}
    for names in ATTENTION_PROJECTIONS:
        if set(names) <= linear_names:
            return list(names)
    raise ValueError(f"No attention projections found among Linear layers {sorted(linear_names)}")
