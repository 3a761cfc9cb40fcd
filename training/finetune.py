"""Fine-tuning strategies `partial`, `lora` and `full`, on CPU, one GPU or many (Accelerate).

Every fine-tuning run starts its head from the linear probe (LP-FT, Kumar et al. 2022): the
encoder is then not pulled around by a random head in the first steps, which matters most with
a few examples per class. Loss is class-weighted; early stopping keeps the epoch with the best
validation macro-F1.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader

from training.calibration import calibrate
from training.context import StrategyResult, TrainContext
from training.contrastive import ClassBalancedBatches, supervised_contrastive_loss
from training.inference import predict
from training.layers import find_attention_projections, find_encoder_layers
from training.model import Classifier, count_trainable
from training.probe import fit_linear_probe, fit_probe, install_probe, set_head

logger = logging.getLogger(__name__)


def prepare_partial(model: Classifier, layers: int) -> None:
    """Freeze the encoder except its top ``layers`` layers (transformer layers; for an
    EfficientNet the head convolution counts as the top layer, then its blocks)."""
    model.encoder.requires_grad_(False)
    top = getattr(model.encoder, "top_layers", None)
    for layer in top(layers) if top is not None else find_encoder_layers(model.encoder)[-layers:]:
        layer.requires_grad_(True)


def prepare_lora(model: Classifier, r: int, alpha: int, dropout: float) -> None:
    """Wrap the encoder with PEFT LoRA adapters: on attention projections, or on an EfficientNet's
    pointwise convolutions (see :data:`training.vision.EFFICIENTNET_LORA_TARGETS`)."""
    from peft import LoraConfig, get_peft_model

    targets = getattr(model.encoder, "lora_targets", None)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets() if targets is not None else find_attention_projections(model.encoder),
    )
    with warnings.catch_warnings():  # peft calls a transformers API deprecated for v6
        warnings.simplefilter("ignore", category=FutureWarning)
        model.encoder = get_peft_model(model.encoder, config)


def merge_lora(model: Classifier, ctx: TrainContext) -> float:
    """Merge LoRA adapters into the encoder weights; return max |logits merged - unmerged|."""
    split = "validation" if len(ctx.splits.validation) else "train"
    sample = ctx.inputs(split)[:64]
    before = _sample_logits(model, ctx, sample)
    model.encoder = model.encoder.merge_and_unload()
    after = _sample_logits(model, ctx, sample)
    return float(np.abs(before - after).max())


def _sample_logits(model: Classifier, ctx: TrainContext, inputs: list[Any]) -> np.ndarray:
    return predict(
        model, ctx.processor, inputs, batch_size=ctx.config.eval_batch_size, mixed_precision="no"
    ).logits


def class_weights(y: np.ndarray, num_labels: int) -> torch.Tensor:
    """Balanced class weights n / (k * count); labels absent from training get weight 0."""
    counts = np.bincount(y, minlength=num_labels).astype(np.float64)
    weights = np.where(counts > 0, len(y) / (max((counts > 0).sum(), 1) * counts.clip(min=1)), 0.0)
    return torch.as_tensor(weights, dtype=torch.float32)


def resolve_mixed_precision(setting: str, device: torch.device) -> str:
    """Accelerate's mixed_precision value: bf16 or fp16 on CUDA under ``auto``, else ``no``."""
    if setting != "auto":
        return setting if device.type == "cuda" else "no"
    if device.type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _make_loader(ctx: TrainContext, seed: int) -> DataLoader:
    inputs, labels = ctx.inputs("train"), ctx.label_ids("train")
    processor, augment = ctx.processor, ctx.config.augment
    views = np.random.default_rng(seed)  # the random views of augmented images

    def collate(rows: list[tuple[Any, int]]) -> dict[str, Any]:
        encoded = processor.encode([r[0] for r in rows], augment=augment, rng=views)
        return {"inputs": encoded, "labels": torch.tensor([r[1] for r in rows])}

    rows = list(zip(inputs, labels.tolist(), strict=True))
    pin = ctx.device.type == "cuda"
    if ctx.config.contrastive_weight > 0:  # the contrastive loss needs each label's rows together
        batches = ClassBalancedBatches(labels, ctx.config.batch_size, seed)
        return DataLoader(rows, batch_sampler=batches, collate_fn=collate, pin_memory=pin)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        rows,  # type: ignore[arg-type]
        batch_size=ctx.config.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=generator,
        pin_memory=pin,
    )


def _validation_f1(model: Classifier, ctx: TrainContext) -> float | None:
    if not len(ctx.splits.validation):
        return None
    preds = ctx.predict(model, "validation").predicted
    return float(f1_score(ctx.label_ids("validation"), preds, average="macro"))


class EarlyStopping:
    """Keeps the trainable weights of the best epoch; says when patience has run out."""

    def __init__(self, model: nn.Module, patience: int) -> None:
        self.model, self.patience = model, patience
        self.best, self.stale = -float("inf"), 0
        self.state = self._snapshot()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def should_stop(self, score: float) -> bool:
        """Record an epoch's score (higher is better); True once it has not improved for long enough."""
        if score > self.best + 1e-6:
            self.best, self.stale, self.state = score, 0, self._snapshot()
            return False
        self.stale += 1
        return self.stale >= self.patience

    def restore(self) -> None:
        """Put the best epoch's weights back into the model."""
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in self.state:
                    param.copy_(self.state[name])


def freeze_batch_norm(model: nn.Module) -> None:
    """Keep every BatchNorm layer in inference mode: running statistics stay the pretrained ones.

    Batches of 32 augmented images from a few hundred estimate the statistics far worse than the
    pretraining did, and the statistics then differ between training and serving; the layers'
    scale and shift still train where their block is unfrozen (the Keras transfer-learning
    recipe). Text encoders have no BatchNorm: this does nothing to them.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class TrainingLoss(nn.Module):
    """Class-weighted cross-entropy on the logits, plus, with a ``contrastive_weight``, the
    supervised contrastive loss on the embeddings the head reads."""

    def __init__(self, ctx: TrainContext, device: torch.device) -> None:
        super().__init__()
        cfg = ctx.config
        weights = class_weights(ctx.label_ids("train"), len(ctx.splits.labels))
        if cfg.class_weighting == "none":
            weights = torch.ones_like(weights)
        self.cross_entropy = nn.CrossEntropyLoss(
            weight=weights.to(device), label_smoothing=cfg.label_smoothing
        )
        self.contrastive_weight, self.temperature = cfg.contrastive_weight, cfg.contrastive_temperature

    def forward(
        self, model: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor
    ) -> torch.Tensor:
        """The loss of one batch through ``model`` (a :class:`Classifier`, possibly wrapped)."""
        if not self.contrastive_weight:
            return self.cross_entropy(model(*inputs).float(), labels)
        logits, embeddings = model(*inputs, with_embeddings=True)
        contrastive = supervised_contrastive_loss(embeddings.float(), labels, self.temperature)
        return self.cross_entropy(logits.float(), labels) + self.contrastive_weight * contrastive


def _progress(disable: bool) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, disable=disable, transient=False, console=Console(stderr=True))


def run_training_loop(model: Classifier, ctx: TrainContext, strategy: str) -> list[dict[str, Any]]:
    """Train the parameters that require grad; restore the best epoch; return per-epoch history."""
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    cfg = ctx.config
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision, ctx.device),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=ctx.device.type == "cpu",
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate_for(strategy), weight_decay=cfg.weight_decay)
    loader = _make_loader(ctx, cfg.seed)
    steps = math.ceil(len(loader) / cfg.gradient_accumulation_steps) * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps), steps)
    loss_fn = TrainingLoss(ctx, accelerator.device)
    wrapped, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    stopper = EarlyStopping(model, cfg.early_stopping_patience)
    history: list[dict[str, Any]] = []
    with _progress(disable=not accelerator.is_local_main_process) as bar:
        task = bar.add_task(strategy, total=len(loader) * cfg.epochs)
        for epoch in range(1, cfg.epochs + 1):
            shown = f"{strategy}: epoch {epoch}/{cfg.epochs}"
            if history:
                shown += f" (val macro-F1 {history[-1]['validation_macro_f1'] or 0:.3f})"
            losses: list[float] = []

            def show(loss: float, shown: str = shown, losses: list[float] = losses) -> None:
                losses.append(loss)
                bar.update(task, advance=1, description=f"{shown} loss {np.mean(losses):.3f}")

            _train_epoch(accelerator, wrapped, loader, (optimizer, scheduler), loss_fn, show)
            val_f1 = _validation_f1(accelerator.unwrap_model(wrapped), ctx)
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), "validation_macro_f1": val_f1})
            logger.info("%s epoch %d: loss %.4f, val macro-F1 %s", strategy, epoch, np.mean(losses), val_f1)
            if not bar.console.is_terminal and accelerator.is_local_main_process:  # a bar shows nothing there
                shown_f1 = "n/a" if val_f1 is None else f"{val_f1:.3f}"
                bar.console.print(
                    f"{strategy}: epoch {epoch}/{cfg.epochs}, loss {np.mean(losses):.3f}, "
                    f"validation macro-F1 {shown_f1}, {bar.tasks[0].elapsed or 0:.0f} s",
                    highlight=False,
                )
            # Without validation data, the lowest training loss stands in for the best epoch.
            if stopper.should_stop(val_f1 if val_f1 is not None else -float(np.mean(losses))):
                break
    stopper.restore()
    accelerator.free_memory()
    return history


def _train_epoch(
    accelerator: Any,
    model: Any,
    loader: DataLoader,
    stepping: tuple[Any, Any],
    loss_fn: TrainingLoss,
    on_loss: Callable[[float], None],
) -> None:
    """One pass over ``loader``: forward, backward, clipped optimizer and scheduler steps."""
    optimizer, scheduler = stepping
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    freeze_batch_norm(model)
    for batch in loader:
        with accelerator.accumulate(model):
            loss = loss_fn(model, batch["inputs"], batch["labels"])
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        on_loss(loss.item())


def train_finetuned(ctx: TrainContext, strategy: str) -> StrategyResult:
    """Run `partial`, `lora` or `full`: probe-initialised head, fine-tune, merge, calibrate."""
    start = time.perf_counter()
    probe = fit_linear_probe(ctx)
    model = ctx.fresh_model()
    set_head(model, probe.weight, probe.bias)
    # A probe that separates the training data perfectly starts with a near-zero loss and so
    # gives the encoder no gradient; temperature-scaling it on validation data first softens it
    # to its real confidence, which leaves a learning signal.
    initial_temperature = calibrate(model, ctx)
    cfg = ctx.config
    if strategy == "partial":
        prepare_partial(model, cfg.partial_layers)
    elif strategy == "lora":
        prepare_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    elif strategy != "full":
        raise ValueError(f"Unknown fine-tuning strategy {strategy!r}; expected partial, lora or full")
    trainable = count_trainable(model)
    history = run_training_loop(model, ctx, strategy)
    details: dict[str, Any] = {
        "history": history,
        "learning_rate": cfg.learning_rate_for(strategy),
        "probe_temperature": initial_temperature,
    }
    if strategy == "lora":
        details["lora_merge_max_abs_diff"] = merge_lora(model, ctx)
    model.requires_grad_(True)
    head, refit = refit_head_on_features(model, ctx, cfg.reprobe_after_finetune)
    details.update(head)
    return StrategyResult(strategy, model.eval(), time.perf_counter() - start, trainable, details, refit)


def refit_head_on_features(
    model: Classifier, ctx: TrainContext, reprobe: bool
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """After the encoder changed: a fresh probe on its features (with its refit on train +
    validation, like `head`), or, with ``reprobe`` off or no validation rows, the trained head
    recalibrated. Returns what was done (``temperature``, ``reprobe``) and the refit head."""
    if reprobe and len(ctx.splits.validation):
        train_emb, val_emb = (
            ctx.predict(model, "train").embeddings,
            ctx.predict(model, "validation").embeddings,
        )
        probe = fit_probe(train_emb, ctx.label_ids("train"), val_emb, ctx.label_ids("validation"), ctx)
        described, refit = install_probe(model, probe, ctx)
        return {"reprobe": described, "temperature": described["temperature"]}, refit
    return {"temperature": calibrate(model, ctx)}, None
