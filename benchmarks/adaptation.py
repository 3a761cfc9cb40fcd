"""Domain adaptation without target labels: how much of the source-only -> oracle gap each method
closes, and whether the adaptation gate would let it ship.

Run by hand (not in CI), e.g.::

    python -m benchmarks.adaptation --data ../shared/datasets/magnetic_tiles
    python -m benchmarks.adaptation --modality text --data ../shared/datasets/banking77

Images: the magnetic tiles, trained on dark lighting conditions and deployed on bright ones
(shifts ``exp1->exp6`` and ``exp12->exp56``). Texts: BANKING77, trained on clean texts of the
training file (``--per-label`` per intent) and deployed on its test file changed by the shift:
``typos`` (character noise: a typo in about one word in six) or ``chat`` (an in-app chat
channel: lower case, no punctuation, chat abbreviations). Per seed, the target inputs are split
in half (stratified): one half is the unlabelled adaptation set, the other the evaluation set of
every model of that seed. Source-only = the base strategy on the source; oracle = the same
strategy on the source plus the labelled adaptation half; each method adapts the source-only
model to the unlabelled half as the monitor would to a window: to the part its gate does not hold
out (``adapt_gate_share``, 30%, fixed by a hash of each input; ``training/adaptation.py``, the code
`refit train --strategy ...` runs). With ``target_labels`` = 5, five labelled adaptation inputs
per label join the source before training and adaptation (adaptation plus a handful of labels).
A stratified 15% of the source is held out as the "original test split" of the gate; validation
rows (early stopping, the probe's C, calibration) come from the rest of the source only.

The gate is the monitor's (:func:`monitoring.adaptation_gate.judge_adaptation`, default settings):
test accuracy on the source's held-out split, and the label-free checks on the held-out share of
the adaptation half; with no target labels held out, it refuses the strategies those checks cannot
vouch for (``tent``, ``dann``, ``tapt``).

Writes ``benchmarks/results/adaptation.json`` (rows: modality, shift, method, seed, target_labels,
accuracy_source_only, accuracy_adapted, accuracy_oracle, macro_f1_source_only, macro_f1_adapted,
macro_f1_oracle, seconds, and gate: "promoted" or "refused: why") and ``adaptation.md`` (medians
over seeds, the share of the macro-F1 gap each method recovers, how often the gate lets it ship).
``seconds`` is the method's own cost (the adaptation, not the base training it starts from). A
method is ``strategy`` or ``strategy:KEY=VALUE,...`` (a config override, e.g.
``bn-adapt:bn_layers=all`` is plain AdaBN).

``--save-gate-inputs DIR`` keeps what the gate read for each row (both models' probabilities and
correctness on the source's held-out split and probabilities on the held-out window; one ``.npz``
per row, too large for the repository); ``--rejudge DIR`` trains nothing and gives the rows it has
inputs for the verdict of the gate as it is now, so a changed gate is measured in minutes, not in
a rerun.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.train_banking77 import describe_environment, load_banking77
from monitoring.adaptation_gate import (
    count_test_changes,
    judge_adaptation,
    measure_window,
    overconfidence,
    split_window,
)
from monitoring.gate import GateNumbers
from monitoring.settings import MonitorSettings
from training.adaptation import adapt_model
from training.blobs import BlobStore
from training.cli import parse_assignments
from training.config import TrainingConfig
from training.console import quiet_transformers
from training.context import StrategyResult, TrainContext
from training.data import split_frames, stratified_split
from training.image_data import load_image_dataset
from training.inference import predict
from training.modality import ImageModality, Modality, TextModality
from training.processors import rewritten_inputs
from training.strategies import evaluate_split, run_strategy

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_SHIFTS = {"exp1->exp6": (("exp1",), ("exp6",)), "exp12->exp56": (("exp1", "exp2"), ("exp5", "exp6"))}
TEXT_SHIFTS = ("typos", "chat")
METHODS = {
    "image": ("bn-adapt", "tent", "self-train", "dann"),
    "text": ("self-train", "tapt", "spelling"),
}
SOURCE_TEST = 0.15  # of the source, held out as the gate's original test split
TYPO_RATE = 1 / 6  # words with one typo: chat and mobile support messages, not a worst case
CHAT_WORDS = {
    "you": "u", "your": "ur", "are": "r", "please": "pls", "thanks": "thx", "thank": "thx",
    "account": "acct", "because": "bc", "money": "$", "transfer": "xfer", "received": "got",
    "what": "wat", "why": "y", "to": "2", "for": "4", "before": "b4", "know": "kno",
}  # fmt: skip


@dataclass
class Cell:
    """One shift and seed: labelled source rows, the target's two halves, the gate's source test."""

    source: pd.DataFrame
    adaptation: pd.DataFrame  # labelled; the methods see only its inputs
    evaluation: pd.DataFrame
    source_test: pd.DataFrame


def parse_method(method: str) -> tuple[str, dict[str, Any]]:
    """``bn-adapt:bn_layers=all,bn_mix=0.5`` -> (``bn-adapt``, overrides)."""
    strategy, _, spec = method.partition(":")
    return strategy, parse_assignments([item for item in spec.split(",") if item])


def make_cell(source: pd.DataFrame, target: pd.DataFrame, seed: int) -> Cell:
    """Halve the target (stratified) and hold out the source's test split."""
    adaptation, _, evaluation = stratified_split(target, (0.0, 0.5), seed)
    source, _, source_test = stratified_split(source, (0.0, SOURCE_TEST), seed)
    return Cell(*(f.reset_index(drop=True) for f in (source, adaptation, evaluation, source_test)))


def image_cell(images: pd.DataFrame, shift: str, seed: int) -> Cell:
    """The tiles under the source lights, and under the target lights."""
    source_lights, target_lights = IMAGE_SHIFTS[shift]
    source = images[images["meta_lighting"].isin(source_lights)]
    return make_cell(source, images[images["meta_lighting"].isin(target_lights)], seed)


def add_typos(text: str, rng: np.random.Generator) -> str:
    """One edit (swap, drop, double, or a neighbouring letter) in about TYPO_RATE of the words."""
    words = text.split(" ")
    for i, word in enumerate(words):
        if len(word) < 3 or rng.random() >= TYPO_RATE:
            continue
        at = int(rng.integers(1, len(word) - 1))
        edit = int(rng.integers(4))
        if edit == 0:
            word = word[: at - 1] + word[at] + word[at - 1] + word[at + 1 :]
        elif edit == 1:
            word = word[:at] + word[at + 1 :]
        elif edit == 2:
            word = word[:at] + word[at] + word[at:]
        else:
            word = word[:at] + "qwertyuiopasdfghjklzxcvbnm"[int(rng.integers(26))] + word[at + 1 :]
        words[i] = word
    return " ".join(words)


def to_chat(text: str) -> str:
    """The same request typed into an in-app chat: lower case, no punctuation, abbreviations."""
    words = re.sub(r"[^\w\s$']", " ", text.lower()).split()
    return " ".join(CHAT_WORDS.get(word, word) for word in words)


def text_cell(train: pd.DataFrame, test: pd.DataFrame, shift: str, seed: int, per_label: int) -> Cell:
    """``per_label`` clean training texts per intent; the test texts changed by ``shift``."""
    rng = np.random.default_rng(seed)
    source = train.groupby("label", sort=True).sample(n=per_label, random_state=seed, replace=False)
    shifted = [add_typos(t, rng) if shift == "typos" else to_chat(t) for t in test["text"]]
    return make_cell(source, test.assign(text=shifted), seed)


def train_base(
    data: pd.DataFrame, evaluation: pd.DataFrame, modality: Modality, config: TrainingConfig
) -> tuple[TrainContext, StrategyResult]:
    """The base strategy on ``data`` (validation carved from it), scored on ``evaluation``."""
    splits = split_frames(data, evaluation, validation_fraction=0.1, seed=config.seed, source="source",
                          column=modality.column)  # fmt: skip
    modality.config = config
    torch.manual_seed(config.seed)
    ctx = TrainContext.create(config, splits, modality)
    return ctx, run_strategy(config.adapt_base, ctx)


def finalized(result: StrategyResult) -> StrategyResult:
    """A copy with the refitted head installed (the result itself stays adaptable)."""
    final = copy.deepcopy(result)
    final.finalize()
    return final


def score(result: StrategyResult, ctx: TrainContext) -> tuple[float, float]:
    """Accuracy and macro-F1 on the evaluation half, after the refit."""
    metrics = evaluate_split(finalized(result), ctx.reading_as(result), "test")
    return round(metrics.accuracy, 4), round(metrics.macro_f1, 4)


def gate_inputs(
    source_only: StrategyResult, adapted: StrategyResult, ctx: TrainContext, cell: Cell, window: list[Any]
) -> dict[str, np.ndarray]:
    """What the adaptation gate reads of the two models: each one's probabilities and correctness
    on the source's held-out split and probabilities on the held-out window, the labels and the
    training mix."""
    labels = ctx.splits.labels
    test_inputs, truth = ctx.modality.inputs(cell.source_test), cell.source_test["label"].to_numpy()
    arrays: dict[str, np.ndarray] = {}
    for name, result in (("production", source_only), ("candidate", adapted)):
        model, processor = finalized(result).model, ctx.reading_as(result).processor
        tested = predict(model, processor, test_inputs, device=ctx.device).probabilities
        answers = np.asarray(labels, dtype=object)[tested.argmax(axis=1)]
        arrays[f"{name}_correct"] = np.asarray(answers == truth, dtype=bool)
        arrays[f"{name}_test"] = tested
        arrays[f"{name}_window"] = predict(model, processor, window, device=ctx.device).probabilities
    arrays["candidate_rewritten"] = rewritten_inputs(ctx.reading_as(adapted).processor, window)
    mix = Counter(ctx.splits.train["label"])
    arrays["labels"] = np.asarray(labels, dtype=str)
    arrays["prior"] = np.asarray([mix[label] / len(ctx.splits.train) for label in labels])
    return arrays


def judge(inputs: dict[str, np.ndarray], method: str) -> str:
    """The monitor's adaptation gate on :func:`gate_inputs` of an adaptation by ``method``:
    "promoted" or "refused: why"."""
    defaults = MonitorSettings()
    labels = [str(label) for label in inputs["labels"]]
    prior = {label: float(share) for label, share in zip(labels, inputs["prior"], strict=True) if share > 0}
    before, after = inputs["production_correct"], inputs["candidate_correct"]
    numbers = GateNumbers(
        production_test_accuracy=float(np.mean(before)),
        candidate_test_accuracy=float(np.mean(after)),
        production_feedback_accuracy=float("nan"),
        candidate_feedback_accuracy=float("nan"),
        feedback_train_rows=0,
        feedback_gate_rows=0,
        tolerance=defaults.adapt_tolerance,
        window=measure_window(
            (inputs["production_window"], labels),
            (inputs["candidate_window"], labels),
            prior,
            defaults.adapt_max_mix_growth,
            defaults.adapt_max_confidence_fall,
            inputs.get("candidate_rewritten"),  # absent from gate inputs saved before it was read
            overconfident_on_test(inputs),
        ),
        test_changes=count_test_changes(before, after),
        adaptation=parse_method(method)[0],
    )
    decision = judge_adaptation(numbers, defaults.adapt_label_free_strategies)
    return "promoted" if decision.promoted else f"refused: {decision.reason}"


def overconfident_on_test(inputs: dict[str, np.ndarray]) -> tuple[float, float]:
    """Each model's :func:`monitoring.adaptation_gate.overconfidence` on the source's held-out split
    (none in gate inputs saved before the gate read it)."""
    if "production_test" not in inputs:
        return 0.0, 0.0
    return (
        overconfidence(inputs["production_test"].max(axis=1), inputs["production_correct"]),
        overconfidence(inputs["candidate_test"].max(axis=1), inputs["candidate_correct"]),
    )


def inputs_file(directory: Path, row: dict[str, Any]) -> Path:
    """Where a row's gate inputs are saved (``--save-gate-inputs``)."""
    name = "-".join(str(row[key]) for key in ("modality", "shift", "method", "seed", "target_labels"))
    return directory / f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', name)}.npz"


def rejudge(rows: list[dict[str, Any]], directory: Path) -> int:
    """Give each row whose gate inputs ``directory`` holds the current gate's verdict; how many."""
    judged = 0
    for row in rows:
        path = inputs_file(directory, row)
        if path.is_file():
            with np.load(path) as saved:
                row["gate"] = judge(dict(saved), row["method"])
            judged += 1
    return judged


def run_seed(
    cell: Cell,
    modality: Modality,
    shift: str,
    seed: int,
    methods: list[str],
    target_labels: int,
    scratch: Path,
    base_config: TrainingConfig,
    save_inputs: Path | None = None,
) -> list[dict[str, Any]]:
    """Source-only, oracle and every method for one shift, seed and label budget (each row's gate
    inputs saved in ``save_inputs`` when given)."""
    handful = cell.adaptation.groupby("label", sort=True).head(target_labels)
    unlabelled = cell.adaptation.drop(index=handful.index)
    source = pd.concat([cell.source, handful], ignore_index=True)
    target_file = (
        scratch / f"target-{modality.name}-{re.sub(r'[^a-z0-9]', '', shift)}-{seed}-{target_labels}.csv"
    )
    # Keyed by content (an image's key, a text itself) as the monitor keys the log's inputs: the
    # images' paths lie in this run's temporary store.
    keys = unlabelled[modality.column].astype(str).tolist()
    window, held_out = split_window(modality.inputs(unlabelled), MonitorSettings().adapt_gate_share, keys)
    pd.DataFrame({"path" if modality.name == "image" else "text": window}).to_csv(target_file, index=False)
    config = base_config.model_copy(update={"seed": seed})
    ctx, source_only = train_base(source, cell.evaluation, modality, config)
    oracle_ctx, oracle = train_base(pd.concat([source, unlabelled], ignore_index=True), cell.evaluation,
                                    modality, config)  # fmt: skip
    accuracy_source, f1_source = score(source_only, ctx)
    accuracy_oracle, f1_oracle = score(oracle, oracle_ctx)
    rows = []
    for method in methods:
        strategy, overrides = parse_method(method)
        ctx.config = TrainingConfig.model_validate(
            {**config.model_dump(), "strategy": strategy, "target_file": target_file, **overrides}
        )
        start = time.perf_counter()
        adapted = adapt_model(strategy, ctx, copy.deepcopy(source_only), run_strategy)
        seconds = time.perf_counter() - start
        accuracy, f1 = score(adapted, ctx)
        rows.append(
            {
                "modality": modality.name,
                "shift": shift,
                "method": method,
                "seed": seed,
                "target_labels": target_labels,
                "accuracy_source_only": accuracy_source,
                "accuracy_adapted": accuracy,
                "accuracy_oracle": accuracy_oracle,
                "macro_f1_source_only": f1_source,
                "macro_f1_adapted": f1,
                "macro_f1_oracle": f1_oracle,
                "seconds": round(seconds, 2),
            }
        )
        inputs = gate_inputs(source_only, adapted, ctx, cell, held_out)
        rows[-1]["gate"] = judge(inputs, method)
        if save_inputs is not None:
            save_inputs.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(inputs_file(save_inputs, rows[-1]), **inputs)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def recovered(row: dict[str, Any]) -> float | None:
    """The share of the source-only -> oracle macro-F1 gap the adapted model closes."""
    gap = row["macro_f1_oracle"] - row["macro_f1_source_only"]
    return None if gap <= 0 else (row["macro_f1_adapted"] - row["macro_f1_source_only"]) / gap


def render_markdown(rows: list[dict[str, Any]], env: dict[str, Any], sizes: dict[str, str]) -> str:
    """Medians over seeds per modality, shift, method and label budget."""
    lines = [
        "# Domain adaptation: source-only vs adapted vs oracle (medians over seeds)",
        "",
        f"Device: {env['device']}; torch {env['torch']}; {env['when']}. Evaluation sets: "
        + "; ".join(f"{shift}: {size}" for shift, size in sizes.items())
        + ". Recovered: (adapted - source-only) / (oracle - source-only) in macro-F1; seconds: the "
        "method's own cost on this machine; gate ships: the seeds whose adaptation the monitor's "
        "gate would promote (the others' reasons are in the JSON).",
        "",
        "| modality | shift | method | target labels | seeds | macro-F1 source-only | adapted | oracle "
        "| recovered | accuracy source-only | adapted | oracle | seconds | gate ships |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["modality"], r["shift"], r["method"], r["target_labels"]) for r in rows}, key=str)
    for key in keys:
        cell = [r for r in rows if (r["modality"], r["shift"], r["method"], r["target_labels"]) == key]
        scored = [k for k in cell[0] if k.startswith(("accuracy", "macro"))]
        med = {k: statistics.median(r[k] for r in cell) for k in scored}
        shares = [s for s in (recovered(r) for r in cell) if s is not None]
        share = f"{statistics.median(shares):.2f}" if shares else "n/a"
        seconds = statistics.median(r["seconds"] for r in cell)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {len(cell)} | {med['macro_f1_source_only']:.4f} "
            f"| {med['macro_f1_adapted']:.4f} | {med['macro_f1_oracle']:.4f} | {share} "
            f"| {med['accuracy_source_only']:.4f} | {med['accuracy_adapted']:.4f} "
            f"| {med['accuracy_oracle']:.4f} | {seconds:.1f} "
            f"| {sum(r.get('gate') == 'promoted' for r in cell)}/{len(cell)} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modality", choices=("image", "text"), default="image")
    parser.add_argument("--data", type=Path, default=None, help="default: the modality's shared dataset")
    parser.add_argument("--shifts", default=None, help="comma-separated; default: the modality's")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--target-labels", default="0", help="comma-separated label budgets per label: 0,5")
    parser.add_argument(
        "--methods", default=None, help="semicolon-separated: strategy or strategy:KEY=VALUE,..."
    )
    parser.add_argument("--base", default="head", help="the strategy trained on the source")
    parser.add_argument("--base-model", default=None, help="default: EfficientNet-Lite0 / all-MiniLM-L6-v2")
    parser.add_argument("--per-label", type=int, default=20, help="texts: clean source texts per intent")
    parser.add_argument("--max-images", type=int, default=None, help="the first N images per class (smoke)")
    parser.add_argument("--set", action="append", default=[], help="training setting KEY=VALUE (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="adaptation", help="results file stem")
    parser.add_argument(
        "--append", action="store_true", help="keep the file's rows of other cells (a run of other methods)"
    )
    parser.add_argument(
        "--save-gate-inputs", type=Path, default=None,
        help="a folder to save what the gate read for each row (both models' outputs), for --rejudge",
    )  # fmt: skip
    parser.add_argument(
        "--rejudge", type=Path, default=None,
        help="train nothing: give the rows with gate inputs saved in this folder the current gate's verdict",
    )  # fmt: skip
    return parser.parse_args(argv)


def load_cells(args: argparse.Namespace, scratch: Path) -> tuple[Modality, dict[str, list[Cell]]]:
    """The modality and, per shift, one cell per seed."""
    seeds = [int(s) for s in args.seeds.split(",")]
    config = TrainingConfig(modality=args.modality)
    if args.modality == "text":
        train, test = load_banking77(args.data or Path("../shared/datasets/banking77"))
        shifts = args.shifts.split(",") if args.shifts else list(TEXT_SHIFTS)
        cells = {shift: [text_cell(train, test, shift, s, args.per_label) for s in seeds] for shift in shifts}
        return TextModality(config), cells
    store = BlobStore(scratch / "images")
    images = load_image_dataset(
        (args.data or Path("../shared/datasets/magnetic_tiles")) / "manifest.csv", store
    )
    if args.max_images:
        images = images.groupby(["label", "meta_lighting"], sort=True).head(args.max_images)
        images = images.reset_index(drop=True)
    shifts = args.shifts.split(",") if args.shifts else list(IMAGE_SHIFTS)
    return ImageModality(config, store), {
        shift: [image_cell(images, shift, s) for s in seeds] for shift in shifts
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every shift, seed, label budget and method; write JSON and markdown after each seed."""
    logging.basicConfig(level=logging.WARNING)
    quiet_transformers()
    args = parse_args(argv)
    if args.rejudge is not None:
        rows = read_kept_rows(args.out / f"{args.name}.json")
        judged = rejudge(rows, args.rejudge)
        sizes = json.loads((args.out / f"{args.name}.sizes.json").read_text())
        write_results(rows, args.out, args.name, sizes)
        print(f"{judged} of {len(rows)} rows judged again from {args.rejudge}")
        return rows
    methods = [m for m in (args.methods or ";".join(METHODS[args.modality])).split(";") if m]
    base_config = TrainingConfig.model_validate(
        {"name": "adaptation", "modality": args.modality, "adapt_base": args.base,
         "base_model": args.base_model, **parse_assignments(args.set)}
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    kept = read_kept_rows(args.out / f"{args.name}.json") if args.append else []
    # The evaluation sets' sizes, kept beside the rows (whose format is fixed) for the markdown.
    sizes_file = args.out / f"{args.name}.sizes.json"
    sizes: dict[str, str] = json.loads(sizes_file.read_text()) if args.append and sizes_file.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="refit-adaptation-") as scratch:
        modality, cells = load_cells(args, Path(scratch))
        for shift, by_seed in cells.items():
            for seed, cell in zip((int(s) for s in args.seeds.split(",")), by_seed, strict=True):
                sizes[shift] = f"{len(cell.evaluation)} {args.modality}s (half of the target)"
                for labels in (int(n) for n in args.target_labels.split(",")):
                    rows += run_seed(
                        cell, modality, shift, seed, methods, labels, Path(scratch), base_config,
                        args.save_gate_inputs,
                    )  # fmt: skip
                    write_results(merge_rows(kept, rows), args.out, args.name, sizes)
                    sizes_file.write_text(json.dumps(sizes, indent=2) + "\n")
    return rows


def cell_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a row: modality, shift, method, seed, label budget."""
    return row["modality"], row["shift"], row["method"], row["seed"], row["target_labels"]


def read_kept_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of an earlier run, if its file exists."""
    return json.loads(path.read_text()) if path.is_file() else []


def merge_rows(kept: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``kept`` rows the new ``rows`` do not measure again, then the new rows."""
    new = {cell_key(r) for r in rows}
    return [r for r in kept if cell_key(r) not in new] + rows


def write_results(rows: list[dict[str, Any]], out: Path, name: str, sizes: dict[str, str]) -> None:
    """The JSON rows and the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / f"{name}.md").write_text(render_markdown(rows, describe_environment(), sizes))


if __name__ == "__main__":
    main()
