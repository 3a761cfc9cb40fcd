"""Every training strategy on BANKING77 at three budgets: 10 and 30 examples per intent, and all.

Run by hand (not in CI), e.g.::

    python benchmarks/train_banking77.py --data ../shared/datasets/banking77

Writes ``benchmarks/results/train_banking77.json`` (one row per strategy, budget and seed),
``train_banking77.md`` (medians over seeds) and ``train_banking77.png`` (every seed's accuracy by
strategy, a panel per budget). Few-shot budgets run over three seeds.

``--strategies setfit`` adds the `setfit` library beside Refit's strategies, on the same
all-MiniLM-L6-v2 weights and the same sampled rows (all of them: SetFit selects nothing on a
validation split), in its own virtualenv (``benchmarks/peers/setfit``, created on first use).

``--strategies partial-contrastive`` is `partial` with the settings :data:`RECIPES` gives it (a
supervised contrastive loss beside cross-entropy, and each intent's name as a training row); its
rows carry those settings.

``--strategies self-train`` is few labels plus many unlabelled texts, what a ticket queue has:
``adapt_base`` (``--set adapt_base=partial``) trains on the sampled rows, then again with the
training texts it was not given (their labels dropped; never the test or ``--dev`` rows) that it
labels with confidence. Its rows say how many unlabelled texts it read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import torch

from benchmarks.peers import PeerUnavailable, peer_version, run_peer
from training.cli import parse_assignments
from training.config import TrainingConfig
from training.console import quiet_transformers
from training.context import TrainContext
from training.data import split_frames
from training.label_names import add_label_name_rows
from training.model import resolve_base_model
from training.strategies import evaluate_split, run_strategy

STRATEGIES = ("baseline", "head", "partial", "lora", "full")
SEMI_SUPERVISED = ("self-train",)  # the sampled rows plus the rest of the training texts, unlabelled
PEER_STRATEGIES = ("setfit",)  # other libraries, each run in its peer virtualenv
# Refit strategies with settings of their own, measured beside the plain ones: name -> (strategy, settings)
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "partial-contrastive": ("partial", {"contrastive_weight": 0.5, "label_name_examples": True}),
}
ORDER = (*STRATEGIES, *RECIPES, *SEMI_SUPERVISED, *PEER_STRATEGIES)  # of the table's and plot's rows
SETFIT_ITERATIONS = 20  # sentence pairs per training example: SetFit's few-shot setting
RESULTS = Path(__file__).parent / "results"


class PeakRss:
    """Samples this process's resident memory in a thread; ``peak_mb`` is the maximum seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


def load_banking77(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test frames with columns ``text`` and ``label``."""
    frames = []
    for name in ("train.csv", "test.csv"):
        raw = pd.read_csv(data_dir / name, dtype=str, keep_default_na=False)
        frames.append(pd.DataFrame({"text": raw["text"], "label": raw["category"]}))
    return frames[0], frames[1]


def sample_per_class(train: pd.DataFrame, per_class: int | str, seed: int) -> pd.DataFrame:
    """``per_class`` rows of each label (all rows for ``"all"``), drawn with ``seed``."""
    if per_class == "all":
        return train
    groups = [
        g.sample(n=min(int(per_class), len(g)), random_state=seed)
        for _, g in train.groupby("label", sort=True)
    ]
    return pd.concat(groups)  # original row ids kept: --dev removes them from training


def run_cell(
    train: pd.DataFrame,
    test: pd.DataFrame,
    per_class: int | str,
    seed: int,
    strategy: str,
    overrides: dict[str, Any],
    setfit_iterations: int = SETFIT_ITERATIONS,
) -> dict[str, Any]:
    """Train one strategy on one budget and seed; return its result row."""
    data = sample_per_class(train, per_class, seed).reset_index(drop=True)
    if strategy == "setfit":
        base_model = overrides.get("base_model", "minilm")
        return run_setfit(data, test, per_class, seed, base_model, setfit_iterations)
    splits = split_frames(data, test, validation_fraction=0.1, seed=seed, source="banking77")
    trained, settings = RECIPES.get(strategy, (strategy, {}))
    with tempfile.TemporaryDirectory(prefix="refit-unlabelled-") as scratch:
        unlabelled: dict[str, Any] = {}
        if strategy in SEMI_SUPERVISED:
            unlabelled = {"target_file": write_unlabelled(train, data, Path(scratch))}
        config = TrainingConfig(
            name="banking77", strategy=trained, seed=seed, **(overrides | settings), **unlabelled
        )
        if config.label_name_examples:  # as `refit train` reads its data (training.pipeline)
            splits = add_label_name_rows(splits, "text")
        torch.manual_seed(seed)
        ctx = TrainContext.create(config, splits)
        with PeakRss() as rss:
            start = time.perf_counter()
            result = run_strategy(trained, ctx)
            result.finalize()
            seconds = time.perf_counter() - start
    metrics = evaluate_split(result, ctx, "test")
    row = {
        "strategy": strategy,
        "per_class": per_class,
        "seed": seed,
        "accuracy": round(metrics.accuracy, 4),
        "macro_f1": round(metrics.macro_f1, 4),
        "train_seconds": round(seconds, 1),
        "peak_rss_mb": rss.peak_mb,
        "trainable_params": result.trainable_params,
    }
    if settings:
        row["settings"] = settings
    if strategy in SEMI_SUPERVISED:
        pseudo = result.details["adaptation"]["pseudo_labels"]
        row |= {
            "adapt_base": config.adapt_base,
            "unlabelled_texts": pseudo["target_inputs"],
            "pseudo_labelled": pseudo["pseudo_labelled"],
        }
    return row


def write_unlabelled(train: pd.DataFrame, sampled: pd.DataFrame, folder: Path) -> Path:
    """A CSV of the training texts not in ``sampled`` (matched by text), without their labels."""
    rest = train.loc[~train["text"].isin(set(sampled["text"])), ["text"]]
    path = folder / "unlabelled.csv"
    rest.to_csv(path, index=False)
    return path


def run_setfit(
    data: pd.DataFrame,
    test: pd.DataFrame,
    per_class: int | str,
    seed: int,
    base_model: str,
    iterations: int = SETFIT_ITERATIONS,
) -> dict[str, Any]:
    """SetFit on the same rows and weights, in the setfit peer's virtualenv; its result row
    (``iterations``: sentence pairs per training example).

    Raises:
        PeerUnavailable: the peer could not be installed or its run failed (with the error).
    """
    with tempfile.TemporaryDirectory(prefix="refit-setfit-") as scratch:
        folder = Path(scratch)
        data[["text", "label"]].to_csv(folder / "train.csv", index=False)
        test[["text", "label"]].to_csv(folder / "test.csv", index=False)
        run_peer(
            "setfit", "train.py", str(folder / "train.csv"), str(folder / "test.csv"),
            resolve_base_model(base_model), str(seed), str(folder / "out.json"), str(iterations),
            timeout=setfit_timeout(len(data), iterations),
        )  # fmt: skip
        measured = json.loads((folder / "out.json").read_text())
    return {
        "strategy": "setfit",
        "per_class": per_class,
        "seed": seed,
        "accuracy": round(measured["accuracy"], 4),
        "macro_f1": round(measured["macro_f1"], 4),
        "train_seconds": round(measured["train_seconds"], 1),
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "trainable_params": measured["trainable_params"],
    }


def setfit_timeout(rows: int, iterations: int) -> float:
    """Seconds a SetFit run may take: its contrastive phase grows with its sentence pairs (one per
    row and iteration: 15,400 at 10 per intent took 15-19 minutes on 2 CPU cores, about 0.07 s a
    pair), so a fixed limit that fits 10 per intent stops 30 per intent. An hour, or 0.2 s a pair
    if that is longer (room for a machine shared with other work)."""
    return max(3600.0, 0.2 * rows * iterations)


def render_markdown(rows: list[dict[str, Any]], env: dict[str, Any], notes: tuple[str, ...] = ()) -> str:
    """Medians over seeds, one line per strategy and budget (``notes``: lines under the header)."""
    lines = [
        "# BANKING77: strategies x budgets (test set, medians over seeds)",
        "",
        f"Device: {env['device']}; torch {env['torch']}; {env['when']}.",
        "",
        *(line for note in notes for line in (note, "")),
        "| strategy | per class | seeds | accuracy | macro-F1 | train s | peak RSS MB | trainable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted(
        {(r["per_class"], r["strategy"], name_row(r)) for r in rows},
        key=lambda k: (str(k[0]), ORDER.index(k[1]), k[2]),
    )
    for per_class, _, name in keys:
        cell = [r for r in rows if r["per_class"] == per_class and name_row(r) == name]
        med = {
            k: statistics.median(r[k] for r in cell)
            for k in ("accuracy", "macro_f1", "train_seconds", "peak_rss_mb")
        }
        lines.append(
            f"| {name} | {per_class} | {len(cell)} | {med['accuracy']:.4f} | {med['macro_f1']:.4f} "
            f"| {med['train_seconds']:.1f} | {med['peak_rss_mb']:.0f} | {cell[0]['trainable_params']:,} |"
        )
    return "\n".join([*lines, *describe_unlabelled(rows), *describe_recipes(rows)]) + "\n"


def name_row(row: dict[str, Any]) -> str:
    """A row's strategy, with the strategy it trains first where it has one: ``self-train (partial)``."""
    return f"{row['strategy']} ({row['adapt_base']})" if "adapt_base" in row else row["strategy"]


def describe_unlabelled(rows: list[dict[str, Any]]) -> list[str]:
    """Lines under the table saying what each semi-supervised cell read besides its labels."""
    cells = sorted({(str(r["per_class"]), r["adapt_base"]) for r in rows if "unlabelled_texts" in r})
    lines = []
    for per_class, base in cells:
        cell = [r for r in rows if str(r["per_class"]) == per_class and r.get("adapt_base") == base]
        lines.append(
            f"- `self-train` at {per_class} per intent: `{base}` on the sampled rows, then again with "
            f"{statistics.median(r['pseudo_labelled'] for r in cell):,.0f} of the "
            f"{statistics.median(r['unlabelled_texts'] for r in cell):,.0f} other training texts "
            "(labels dropped) that it labelled with confidence (medians)."
        )
    return ["", *lines] if lines else []


def describe_recipes(rows: list[dict[str, Any]]) -> list[str]:
    """Lines under the table saying which settings each recipe row trained its strategy with."""
    named = {r["strategy"]: r["settings"] for r in rows if "settings" in r}
    lines = [
        f"- `{name}`: `{RECIPES[name][0]}` with "
        + ", ".join(f"`--set {k}={json.dumps(v)}`" for k, v in settings.items())
        + "."
        for name, settings in sorted(named.items())
    ]
    return ["", *lines] if lines else []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/banking77"))
    parser.add_argument("--budgets", default="10,30,all", help="comma-separated: integers or 'all'")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for few-shot budgets ('all' uses 1)")
    parser.add_argument("--only-seeds", default=None, help="comma-separated seeds to run (resume a grid)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--epochs", type=int, default=None, help="override the default epoch limit")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="evaluate on 20 held-out training rows per intent instead of the test set (for tuning)",
    )
    parser.add_argument("--max-test", type=int, default=None, help="evaluate on the first N test rows")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="train_banking77", help="results file stem")
    parser.add_argument(
        "--setfit-iterations", type=int, default=SETFIT_ITERATIONS, help="setfit: sentence pairs per example"
    )
    parser.add_argument(
        "--append", action="store_true", help="keep the file's rows of cells this run does not measure"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the grid, write JSON and markdown, return the rows."""
    logging.basicConfig(level=logging.WARNING)
    quiet_transformers()
    args = parse_args(argv)
    train, test = load_banking77(args.data)
    if args.dev:  # tune without ever looking at the test set
        dev = sample_per_class(train, 20, seed=999)
        train, test = train.drop(dev.index).reset_index(drop=True), dev.reset_index(drop=True)
    if args.max_test:
        test = test.groupby("label", sort=True).head(max(1, args.max_test // 77)).reset_index(drop=True)
    overrides: dict[str, Any] = {"base_model": args.base_model}
    if args.epochs:
        overrides["epochs"] = args.epochs
    overrides |= parse_assignments(args.set)
    rows: list[dict[str, Any]] = []
    results = args.out / f"{args.name}.json"
    kept = json.loads(results.read_text()) if args.append and results.is_file() else []
    notes: list[str] = []
    budgets: list[int | str] = [b if b == "all" else int(b) for b in args.budgets.split(",")]
    for per_class in budgets:
        seeds: list[int] = list(range(1) if per_class == "all" else range(args.seeds))
        if args.only_seeds:
            seeds = [int(s) for s in args.only_seeds.split(",")]
        for seed in seeds:
            for strategy in args.strategies.split(","):
                try:
                    row = run_cell(train, test, per_class, seed, strategy, overrides, args.setfit_iterations)
                except PeerUnavailable as exc:  # the results say which peers ran, and why not
                    notes.append(f"`{strategy}` did not run ({per_class} per intent, seed {seed}): {exc}")
                    print(notes[-1], flush=True)
                    write_results(merge_rows(kept, rows), args.out, args.name, tuple(notes))
                    continue
                print(json.dumps(row), flush=True)
                rows.append(row)
                write_results(merge_rows(kept, rows), args.out, args.name, tuple(notes))
    return rows


def describe_environment() -> dict[str, Any]:
    """Device, torch version and date, for the markdown header."""
    return {
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU x{os.cpu_count()} ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%d"),
    }


def write_results(rows: list[dict[str, Any]], out: Path, name: str, notes: tuple[str, ...] = ()) -> None:
    """Write the JSON rows, the markdown table and the plot (after every row, so a cut-off run keeps
    its rows)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    notes = (*describe_peers(rows), *notes)
    (out / f"{name}.md").write_text(render_markdown(rows, describe_environment(), notes))
    plot_accuracy(rows, out / f"{name}.png")


def describe_peers(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """A line naming the version of each peer library with rows here (from its virtualenv)."""
    peers = sorted({r["strategy"] for r in rows} & set(PEER_STRATEGIES))
    if not peers:
        return ()
    versions = []
    for peer in peers:
        try:
            versions.append(f"{peer} {peer_version(peer, peer)}")
        except (PeerUnavailable, OSError, subprocess.CalledProcessError):
            versions.append(f"{peer} (version unknown: its virtualenv is not installed here)")
    return ("Peers: " + ", ".join(versions) + ", each in its own virtualenv under `benchmarks/peers/`.",)


def plot_accuracy(rows: list[dict[str, Any]], path: Path) -> None:
    """A panel per budget: each strategy's test accuracy by seed (dots) and its median (a bar);
    peer libraries in another colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({str(r["per_class"]) for r in rows}, key=lambda b: int(b) if b.isdigit() else 10**9)
    figure, panels = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.8), squeeze=False)
    for axes, budget in zip(panels[0], budgets, strict=True):
        cell = [r for r in rows if str(r["per_class"]) == budget]
        names = sorted({name_row(r) for r in cell}, key=lambda n: (ORDER.index(n.split(" ")[0]), n))
        for x, name in enumerate(names):
            accuracy = [r["accuracy"] for r in cell if name_row(r) == name]
            colour = "tab:orange" if name in PEER_STRATEGIES else "tab:blue"
            axes.bar(x, statistics.median(accuracy), 0.6, color=colour, alpha=0.35)
            axes.plot([x] * len(accuracy), accuracy, "o", color=colour, markersize=4)
        axes.set_xticks(range(len(names)))
        axes.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        low = min(r["accuracy"] for r in cell)
        axes.set_ylim(max(0.0, low - 0.05), min(1.0, max(r["accuracy"] for r in cell) + 0.02))
        axes.set_title(f"{budget} per intent" if budget != "all" else "all training data", fontsize=10)
        axes.grid(axis="y", alpha=0.3)
    panels[0][0].set_ylabel("test accuracy (bar: median, dots: seeds)")
    figure.suptitle("BANKING77: Refit's strategies (blue) and peer libraries (orange)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def merge_rows(kept: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``kept`` rows with this run's (strategy, budget, seed) cells replaced or added."""
    key = lambda r: (name_row(r), str(r["per_class"]), r["seed"])  # noqa: E731
    return list(({key(r): r for r in kept} | {key(r): r for r in rows}).values())


if __name__ == "__main__":
    main()
