"""Strategy dispatch and the `auto` ladder: benchmark the base model, probe, fine-tune if needed."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from training.adaptation import adapt_model
from training.config import ADAPTATION_STRATEGIES, FINETUNE_STRATEGIES
from training.context import StrategyResult, TrainContext
from training.evaluation import EvaluationResult, evaluate_predictions
from training.feature_extraction import train_baseline, train_head
from training.finetune import train_finetuned

logger = logging.getLogger(__name__)


def run_strategy(name: str, ctx: TrainContext) -> StrategyResult:
    """Train one strategy (not `auto`) and return its merged, calibrated classifier."""
    if name == "baseline":
        return train_baseline(ctx)
    if name == "head":
        return train_head(ctx)
    if name in FINETUNE_STRATEGIES:
        return train_finetuned(ctx, name)
    if name in ADAPTATION_STRATEGIES:  # adapt_model trains adapt_base when (and how) the method needs it
        return adapt_model(name, ctx, None, run_strategy)
    raise ValueError(
        f"Unknown strategy {name!r}; expected baseline, head, partial, lora, full or one of "
        f"{', '.join(ADAPTATION_STRATEGIES)}"
    )


def evaluate_split(result: StrategyResult, ctx: TrainContext, split: str) -> EvaluationResult:
    """Metrics of a trained strategy on one split."""
    preds = ctx.predict(result.model, split)
    return evaluate_predictions(
        ctx.label_ids(split), preds.probabilities, ctx.splits.labels, ctx.config.normal_label
    )


@dataclass
class Rung:
    """One step of the ladder, as shown in the comparison table."""

    strategy: str
    validation_macro_f1: float
    test_accuracy: float
    test_macro_f1: float
    train_seconds: float
    trainable_params: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


@dataclass
class LadderOutcome:
    """The best rung's result and the comparison of every rung climbed."""

    best: StrategyResult
    rungs: list[Rung] = field(default_factory=list)
    stopped_because: str = ""


def _selection_split(ctx: TrainContext) -> str:
    # Model selection never looks at the test split; tiny datasets without validation fall back
    # to training data, which favours the more flexible rung - the only honest option left.
    return "validation" if len(ctx.splits.validation) else "train"


def run_ladder(ctx: TrainContext, console: Console | None = None) -> LadderOutcome:
    """Climb the configured ladder until the target is met or a rung gains too little.

    Rungs are compared on validation macro-F1 (out-of-fold macro-F1 under ``selection: cv``); the
    best one is returned for registration.
    """
    cfg = ctx.config
    selection = _selection_split(ctx)
    outcome: LadderOutcome | None = None
    best_score = -1.0
    for name in cfg.auto_ladder:
        result = run_strategy(name, ctx)
        if cfg.selection == "cv":
            score = float(result.details["cv_macro_f1"])
        else:
            score = evaluate_split(result, ctx, selection).macro_f1
        test = evaluate_split(result, ctx, "test")
        rung = Rung(name, score, test.accuracy, test.macro_f1, result.train_seconds, result.trainable_params)
        logger.info("auto ladder: %s validation macro-F1 %.4f", name, score)
        gain = score - best_score
        if outcome is None:
            outcome = LadderOutcome(best=result)
        outcome.rungs.append(rung)
        if score > best_score:
            outcome.best, best_score = result, score
        reason = stop_reason(
            name, best_score, gain, len(outcome.rungs), cfg.auto_target_macro_f1, cfg.auto_min_gain
        )
        if reason:
            outcome.stopped_because = reason
            break
    assert outcome is not None  # the config validator guarantees a non-empty ladder
    outcome.stopped_because = outcome.stopped_because or "ladder completed"
    (console or Console()).print(render_ladder_table(outcome))
    return outcome


def stop_reason(
    name: str, best_score: float, gain: float, climbed: int, target: float, min_gain: float
) -> str | None:
    """Why the ladder stops after rung ``name``, or None to climb on.

    It stops once the best score so far meets the target, or when a rung after the first
    improved the best score by less than ``min_gain``.
    """
    if best_score >= target:
        return f"{name} reached the target macro-F1 {target}"
    if climbed > 1 and gain < min_gain:
        return f"{name} gained {gain:+.4f} < {min_gain}"
    return None


def render_ladder_table(outcome: LadderOutcome) -> Table:
    """A rich table comparing the rungs; the registered one is marked."""
    table = Table(title=f"auto ladder ({outcome.stopped_because})")
    for column in ("strategy", "val macro-F1", "test acc", "test macro-F1", "train s", "trainable"):
        table.add_column(column, justify="right" if column != "strategy" else "left")
    for rung in outcome.rungs:
        mark = " *" if rung.strategy == outcome.best.strategy else ""
        table.add_row(
            rung.strategy + mark,
            f"{rung.validation_macro_f1:.4f}",
            f"{rung.test_accuracy:.4f}",
            f"{rung.test_macro_f1:.4f}",
            f"{rung.train_seconds:.1f}",
            f"{rung.trainable_params:,}",
        )
    return table
