"""Drift detection power and false alarms on BANKING77: Refit's check vs Evidently's default.

A `head` model is trained on 67 intents (10 held out, unseen). Reference: the version's profile
(held-out rows of the training data). Windows are drawn from BANKING77's test split, resampled to
the training label mix so that scenario `none` has no drift at all:

    none       test texts of the 67 trained intents
    label_mix  test texts of 10 of the trained intents only
    unseen_XX  XX% of the window from the 10 held-out intents
    typos      character-level typos in 30% of the texts
    length     texts from the longest third

    python -m benchmarks.drift_power --data ../shared/datasets/banking77 --trials 100

With ``--modality image`` the same cells on the magnetic tiles (see ``benchmarks/drift_images.py``)
go to ``drift_power_images.json``; Evidently's default then runs on the image descriptors.

Writes ``benchmarks/results/drift_power.json`` (rows: detector, scenario, window, rate, trials,
seconds_per_check, and for Refit seconds_end_to_end) and ``drift_power.md``. Refit's
seconds_per_check is the tests alone (`detect_drift` on features); seconds_end_to_end is what a
user waits for at each check: embedding the window's texts with the served encoder, its features,
the novelty of its texts, the tests and the HTML report (median of the first --e2e-trials windows
of each cell).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import Progress

from benchmarks.arguments import banking77_parser
from benchmarks.drift_images import (
    IMAGE_SCENARIOS,
    image_window_features,
    prepare_images,
    sample_image_window,
)
from benchmarks.drift_peers import (
    ALIBI_DETECTORS,
    NANNYML_DETECTORS,
    PAIRED_DETECTOR,
    PEER_DETECTORS,
    run_alibi,
    run_nannyml,
    uncalibrated_note,
)
from benchmarks.peers import PeerUnavailable
from benchmarks.train_banking77 import load_banking77
from monitoring.drift import NOVELTY_SHARE, detect_drift
from monitoring.reference import Reference, assess_estimate, load_reference
from monitoring.report import ReportContext, render_report
from training.artifacts import load_version_profile
from training.config import TrainingConfig
from training.console import quiet_transformers
from training.images import IMAGE_DESCRIPTORS
from training.pipeline import train_model
from training.probabilities import softmax
from training.registry import ModelRegistry

SCENARIOS = ("none", "label_mix", "unseen_10", "unseen_25", "unseen_50", "typos", "length")
console = Console()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = banking77_parser(__doc__, "benchmarks/.drift-home", "drift_power")
    parser.add_argument("--modality", choices=("text", "image"), default="text")
    parser.add_argument("--windows", default=None, help="default 50,100,200,500,1000 (images: to 500)")
    parser.add_argument("--scenarios", default=None, help="default: every scenario of the modality")
    parser.add_argument("--trials", type=int, default=100, help="windows per cell for Refit's check")
    parser.add_argument(
        "--baseline-trials", type=int, default=100, help="windows per cell for Evidently's default"
    )
    parser.add_argument(
        "--none-trials",
        type=int,
        default=300,
        help="windows per `none` cell for Refit (false alarms need more)",
    )
    parser.add_argument(
        "--e2e-trials", type=int, default=3, help="windows per Refit cell also timed end to end"
    )
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument(
        "--peers", default="", help=f"comma-separated peer detectors (texts): {', '.join(PEER_DETECTORS)}"
    )
    parser.add_argument("--peer-trials", type=int, default=50, help="windows per peer cell")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the cells of an earlier run's JSON that this run does not measure (fill in missing cells)",
    )
    args = parser.parse_args(argv)
    image = args.modality == "image"
    unknown = sorted({p for p in args.peers.split(",") if p} - set(PEER_DETECTORS))
    if unknown:
        parser.error(f"--peers: unknown {unknown}; expected some of {', '.join(PEER_DETECTORS)}")
    if image and args.peers:
        parser.error("--peers compares detectors on texts; leave it out with --modality image")
    if image:
        defaults = parser.parse_args([])
        if args.data == defaults.data:
            args.data = Path("../shared/datasets/magnetic_tiles")
        if args.base_model == defaults.base_model:
            args.base_model = None  # the image default, EfficientNet-Lite0
        if args.name == defaults.name:
            args.name = "drift_power_images"
    args.windows = args.windows or ("50,100,200,500" if image else "50,100,200,500,1000")
    args.scenarios = args.scenarios or ",".join(IMAGE_SCENARIOS if image else SCENARIOS)
    return args


def add_typos(text: str, rng: np.random.Generator, rate: float = 0.08) -> str:
    """Swap, drop or duplicate about ``rate`` of the letters."""
    chars = list(text)
    out: list[str] = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < rate:
            kind = rng.integers(3)
            if kind == 0 and i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 2
                continue
            if kind == 1:
                i += 1
                continue
            out += [c, c]
        else:
            out.append(c)
        i += 1
    return "".join(out)


def prepare(args: argparse.Namespace) -> tuple[Reference, dict[str, Any]]:
    """Train (or reuse) the 67-intent model; embed the test texts, their typo'd copies."""
    train, test = load_banking77(args.data)
    rng = np.random.default_rng(args.seed)
    labels = sorted(train["label"].unique())
    # 10 held-out intents on BANKING77; a third of the labels on a small data set (the smoke test's).
    unseen = set(rng.choice(labels, size=min(10, len(labels) // 3), replace=False))
    registry = ModelRegistry(args.home)
    if not registry.versions("banking67"):
        data = args.home / "banking67-train.csv"
        data.parent.mkdir(parents=True, exist_ok=True)
        train[~train["label"].isin(unseen)].to_csv(data, index=False)
        config = TrainingConfig(
            name="banking67",
            strategy="head",
            base_model=args.base_model,
            seed=args.seed,
            max_length=args.max_length,
        )
        train_model(data, config, registry=registry, console=console)
    reference = load_reference(registry.get("banking67:production"))
    trained = sorted(set(labels) - unseen)
    texts = list(test["text"])
    typo_texts = [add_typos(t, rng) for t in texts]
    pool: dict[str, Any] = {"test": test.reset_index(drop=True), "unseen": unseen, "trained": trained}
    for key, batch in (("clean", texts), ("typos", typo_texts)):
        with console.status(f"embedding {len(batch):,} {key} test texts"):
            logits, embeddings = reference.encoder.outputs(batch)
        pool[key] = {"texts": batch, "probabilities": softmax(logits), "embeddings": embeddings}
    mix = train[~train["label"].isin(unseen)]["label"].value_counts(normalize=True)
    seen = test["label"].isin(trained).to_numpy()
    weights = test["label"].map(mix).fillna(0.0).to_numpy() * seen
    pool["weights"] = weights / weights.sum()  # test rows drawn with the training label mix
    lengths = test["text"].str.len().to_numpy()
    pool["long"] = np.where(seen & (lengths >= np.quantile(lengths, 2 / 3)))[0]
    return reference, pool


def sample_window(
    scenario: str, size: int, pool: dict[str, Any], rng: np.random.Generator
) -> tuple[str, np.ndarray]:
    """(which embedded set, row indices) of one window."""
    test, weights = pool["test"], pool["weights"]
    drawable = int(np.count_nonzero(weights))  # rows of trained labels; small data sets have few
    if scenario in ("none", "typos"):
        idx = rng.choice(len(test), size=size, replace=size > min(2000, drawable), p=weights)
        if scenario == "none":
            return "clean", idx
        return "mixed_typos", idx
    if scenario == "label_mix":
        chosen = set(rng.choice(pool["trained"], size=min(10, len(pool["trained"]) // 2), replace=False))
        rows = np.where(test["label"].isin(chosen))[0]
        return "clean", rng.choice(rows, size=size, replace=size > len(rows))
    if scenario == "length":
        return "clean", rng.choice(pool["long"], size=size, replace=size > len(pool["long"]))
    share = int(scenario.split("_")[1]) / 100
    n_new = round(size * share)
    unseen_rows = np.where(test["label"].isin(pool["unseen"]))[0]
    new = rng.choice(unseen_rows, size=n_new, replace=n_new > len(unseen_rows))
    old = rng.choice(len(test), size=size - n_new, replace=size - n_new > drawable, p=weights)
    return "clean", np.concatenate([old, new])


def window_parts(
    pool: dict[str, Any], source: str, idx: np.ndarray, rng: np.random.Generator
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """(embedded set, test row indices) pairs of a window, in its order (for ``typos``, 30% of its
    rows come from the typo'd set)."""
    if source == "mixed_typos":
        typo = rng.random(len(idx)) < 0.3
        return [(pool["clean"], idx[~typo]), (pool["typos"], idx[typo])]
    return [(pool[source], idx)]


def window_features(
    reference: Reference, pool: dict[str, Any], source: str, idx: np.ndarray, rng: np.random.Generator
) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """Features, texts and probabilities of a window."""
    features, texts, probabilities, _ = parts_features(reference, window_parts(pool, source, idx, rng))
    return features, texts, probabilities


def parts_features(
    reference: Reference, parts: list[tuple[dict[str, Any], np.ndarray]]
) -> tuple[pd.DataFrame, list[str], np.ndarray, np.ndarray]:
    """Features, texts, probabilities and embeddings of a window's parts."""
    texts = [t for emb, rows in parts for t in (emb["texts"][i] for i in rows)]
    probabilities = np.concatenate([emb["probabilities"][rows] for emb, rows in parts])
    embeddings = np.concatenate([emb["embeddings"][rows] for emb, rows in parts])
    rows = pd.DataFrame({"text": texts})
    features, _ = reference.window_features(rows, probabilities, embeddings)
    return features, texts, probabilities, embeddings


def time_check_end_to_end(
    reference: Reference, rows: pd.DataFrame, inputs: list[Any], probabilities: np.ndarray, alpha: float
) -> float:
    """Seconds of the check a user waits for: embed the inputs, features, novelty, tests, report.

    The probabilities (and an image's descriptors, in ``rows``) are what the service logged with
    each prediction.
    """
    start = time.perf_counter()
    current, distances = reference.live_features(rows, inputs, probabilities)
    result = detect_drift(reference.features, current, alpha=alpha, min_window=1)
    note = assess_estimate(distances, reference.novelty_threshold, alpha)[2]
    context = ReportContext("banking67", reference.version.version, None, None, 0, note, 0.0)
    render_report(result, reference.features, current, context)
    return time.perf_counter() - start


def evidently_default(reference: pd.DataFrame, current: pd.DataFrame) -> bool:
    """Evidently's DataDriftPreset with its defaults on the raw text column (or on the image
    descriptors): dataset drift?"""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    texts = [c for c in ("text",) if c in current.columns]
    definition = DataDefinition(
        text_columns=texts, numerical_columns=[c for c in current.columns if c not in texts]
    )
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    for metric in snapshot.dict()["metrics"]:
        if "DriftedColumnsCount" in metric["metric_name"]:
            share = metric["value"]["share"] if isinstance(metric["value"], dict) else metric["value"]
            return bool(share >= 0.5)  # the preset's own dataset-drift rule
    raise RuntimeError("DataDriftPreset returned no DriftedColumnsCount")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every (detector, scenario, window) cell; write JSON and markdown; return the rows."""
    logging.basicConfig(level=logging.WARNING)
    quiet_transformers()
    args = parse_args(argv)
    image = args.modality == "image"
    reference, pool = prepare_images(args) if image else prepare(args)
    profile = load_version_profile(reference.version)
    reference_rows = profile[list(IMAGE_DESCRIPTORS)] if image else profile[["text"]]
    rng = np.random.default_rng(args.seed + 1)
    windows = [int(w) for w in args.windows.split(",")]
    scenarios = args.scenarios.split(",")
    rows: list[dict[str, Any]] = []
    distinct: dict[tuple[str, int], list[int]] = {}  # images per window after duplicates collapse
    earlier = read_earlier(args) if args.merge else []
    cells = [(d, s, w) for s in scenarios for w in windows for d in ("refit", "evidently-default")]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("cells", total=len(cells))
        for detector, scenario, window in cells:
            trials = args.trials if detector == "refit" else args.baseline_trials
            if detector == "refit" and scenario == "none":
                trials = max(trials, args.none_trials)
            progress.update(task, description=f"{detector} {scenario} {window}")
            hits, seconds, end_to_end = 0, [], []
            for trial in range(trials):
                if image:
                    source, idx = sample_image_window(scenario, window, pool, rng)
                    distinct.setdefault((scenario, window), []).append(len(idx))
                    features, inputs, probabilities, described = image_window_features(
                        reference, pool, source, idx
                    )
                else:
                    source, idx = sample_window(scenario, window, pool, rng)
                    features, inputs, probabilities = window_features(reference, pool, source, idx, rng)
                    described = pd.DataFrame({"text": inputs})
                start = time.perf_counter()
                if detector == "refit":
                    result = detect_drift(reference.features, features, alpha=args.alpha, min_window=1)
                    drifted = result.drifted
                else:
                    drifted = evidently_default(reference_rows, described)
                seconds.append(time.perf_counter() - start)
                if detector == "refit" and trial < args.e2e_trials:
                    end_to_end.append(
                        time_check_end_to_end(reference, described, inputs, probabilities, args.alpha)
                    )
                hits += drifted
            if trials:
                row = {
                    "detector": detector,
                    "scenario": scenario,
                    "window": window,
                    "rate": round(hits / trials, 4),
                    "trials": trials,
                    "seconds_per_check": round(statistics.median(seconds), 3),
                }
                if end_to_end:
                    row["seconds_end_to_end"] = round(statistics.median(end_to_end), 3)
                rows.append(row)
                write_results(merge_rows(earlier, rows), args, distinct_note(distinct))
            progress.advance(task)
    peers = [p for p in args.peers.split(",") if p]
    if peers:
        rows += measure_peers(reference, pool, scenarios, windows, peers, args, rng)
    return rows


def measure_peers(
    reference: Reference,
    pool: dict[str, Any],
    scenarios: list[str],
    windows: list[int],
    peers: list[str],
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """The peer detectors' rows on freshly drawn windows of every cell (the same sampling as
    Refit's), written beside the earlier rows; a peer that cannot run is named with its error.

    Refit's check runs on the very same windows too (detector ``refit-peer-windows``): a paired
    comparison, free of the noise between two sets of windows."""
    arrays: dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    frames: dict[tuple[str, int], list[pd.DataFrame]] = {}
    for scenario in scenarios:
        for size in windows:
            for _ in range(args.peer_trials):
                source, idx = sample_window(scenario, size, pool, rng)
                features, _, probabilities, embeddings = parts_features(
                    reference, window_parts(pool, source, idx, rng)
                )
                arrays.setdefault((scenario, size), []).append((embeddings, probabilities))
                frames.setdefault((scenario, size), []).append(features)
    rows: list[dict[str, Any]] = [
        paired_row(reference, cell, found, args.alpha) for cell, found in frames.items()
    ]
    failed: list[str] = []
    # Each Alibi detector runs on its own: the MMD and classifier tests take seconds a window, and
    # one that runs past its limit must not take the others' rows with it.
    runs = [
        *(([p], lambda chosen: run_alibi(reference, arrays, chosen)) for p in peers if p in ALIBI_DETECTORS),
        ([p for p in peers if p in NANNYML_DETECTORS], lambda chosen: run_nannyml(reference, frames, chosen)),
    ]
    earlier = read_earlier(args)
    # written now and after each peer, so that a run cut off later keeps what it measured so far
    write_results(merge_rows(earlier, rows), args)
    for chosen, run in (run for run in runs if run[0]):
        try:
            with console.status(f"{', '.join(chosen)}: {sum(len(v) for v in arrays.values())} windows"):
                rows += run(chosen)
        except PeerUnavailable as exc:
            console.print(f"[yellow]peers did not run[/yellow]: {exc}")
            failed.append(f"Peers that did not run ({', '.join(chosen)}): {exc}")
        write_results(merge_rows(earlier, rows), args, " ".join(failed))
    return rows


def paired_row(
    reference: Reference, cell: tuple[str, int], windows: list[pd.DataFrame], alpha: float
) -> dict[str, Any]:
    """Refit's row on one cell's peer windows."""
    drifted, seconds = 0, []
    for features in windows:
        start = time.perf_counter()
        drifted += detect_drift(reference.features, features, alpha=alpha, min_window=1).drifted
        seconds.append(time.perf_counter() - start)
    return {
        "detector": PAIRED_DETECTOR,
        "scenario": cell[0],
        "window": cell[1],
        "rate": round(drifted / len(windows), 4),
        "trials": len(windows),
        "seconds_per_check": round(statistics.median(seconds), 3),
    }


def read_earlier(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of an earlier run's JSON, if there is one."""
    path = args.out / f"{args.name}.json"
    return list(json.loads(path.read_text())) if path.is_file() else []


def merge_rows(earlier: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier rows with this run's cells replaced or added, in the order a full run writes them."""
    key = lambda r: (r["detector"], r["scenario"], r["window"])  # noqa: E731
    cells = {key(r): r for r in earlier} | {key(r): r for r in new}
    order = {name: i for i, name in enumerate(dict.fromkeys((*SCENARIOS, *IMAGE_SCENARIOS)))}
    return sorted(
        cells.values(), key=lambda r: (order.get(r["scenario"], 99), r["window"], r["detector"] != "refit")
    )


def distinct_note(distinct: dict[tuple[str, int], list[int]]) -> str:
    """A markdown line: the median distinct images of each image window that held fewer than its size."""
    cut = {k: statistics.median(v) for k, v in distinct.items() if statistics.median(v) < k[1]}
    if not cut:
        return ""
    cells = ", ".join(f"{s} w={w}: {n:.0f}" for (s, w), n in sorted(cut.items(), key=lambda kv: kv[0][1]))
    return (
        "Windows larger than half their pool of unseen images are drawn with replacement and, as "
        f"Refit's check does, count each image once; median distinct images per window: {cells}."
    )


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace, note: str = "") -> None:
    """JSON rows and a markdown table (rate per window size, side by side per scenario); the peers
    whose false-alarm rate is above 0.05 are named from the rows, whichever run wrote them."""
    note = " ".join(part for part in (uncalibrated_note(rows), note) if part)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    windows = sorted({r["window"] for r in rows})
    image = args.modality == "image"
    data, inputs = (
        ("the magnetic tiles", "image descriptors") if image else ("BANKING77", "the raw text column")
    )
    lines = [
        f"# Drift detection on {data}: detection rate (false-alarm rate for `none`)",
        "",
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; alpha {args.alpha} (Refit: halved between its "
        f"class probabilities and its other features, novelty taking {NOVELTY_SHARE:.0%} of the second half, "
        "Bonferroni within each); `refit` = two-sample tests "
        f"on prediction, class-probability, embedding, novelty and {'image' if image else 'text'} features; "
        f"`evidently-default` = DataDriftPreset on {inputs}. Trials per cell in the JSON.",
        "",
        *([note, ""] if note else []),
        "| detector | scenario | "
        + " | ".join(f"w={w}" for w in windows)
        + " | s/check, tests (largest w) | s/check, end to end (largest w) |",
        "| --- | --- | " + " | ".join("---" for _ in windows) + " | --- | --- |",
    ]
    keyed = {(r["detector"], r["scenario"], r["window"]): r for r in rows}
    for detector, scenario in dict.fromkeys((r["detector"], r["scenario"]) for r in rows):
        rates = [keyed.get((detector, scenario, w)) for w in windows]
        last = [r for r in rates if r][-1]
        cells = [f"{r['rate']:.2f} ({r['trials']})" if r else "" for r in rates]
        lines.append(
            f"| {detector} | {scenario} | "
            + " | ".join(cells)
            + f" | {last['seconds_per_check']} | {last.get('seconds_end_to_end', '')} |"
        )
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    plot_rates(rows, args.out / f"{args.name}.png")


def plot_rates(rows: list[dict[str, Any]], path: Path, limit: float = 0.05) -> None:
    """One panel per scenario: each detector's rate against the window size; a hollow marker
    where that detector's false-alarm rate at that window is above ``limit`` (uncalibrated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    detectors = list(dict.fromkeys(r["detector"] for r in rows))
    alarms = {(r["detector"], r["window"]): r["rate"] for r in rows if r["scenario"] == "none"}
    columns = min(4, len(scenarios))
    lines = -(-len(scenarios) // columns)
    figure, axes = plt.subplots(
        lines, columns, figsize=(3.2 * columns, 2.7 * lines), squeeze=False, sharex=True, sharey=True
    )
    for panel, scenario in zip(axes.flat, scenarios, strict=False):
        for i, detector in enumerate(detectors):
            cells = sorted(
                (r["window"], r["rate"])
                for r in rows
                if (r["detector"], r["scenario"]) == (detector, scenario)
            )
            if not cells:
                continue
            windows, rates = zip(*cells, strict=True)
            color = f"C{i % 10}"
            panel.plot(windows, rates, color=color, label=detector, lw=2.2 if detector == "refit" else 1.2)
            for window, rate in cells:
                hollow = alarms.get((detector, window), 0.0) > limit
                panel.plot(window, rate, "o", color=color, ms=4, mfc="white" if hollow else color)
        if scenario == "none":
            panel.axhline(limit, color="grey", ls=":", lw=1)
        panel.set_title("none (false alarms)" if scenario == "none" else scenario, fontsize=9)
        panel.set_xscale("log")
        panel.set_ylim(-0.03, 1.03)
    for panel in axes.flat[len(scenarios) :]:
        panel.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower right", fontsize=8, frameon=False)
    figure.supxlabel("window (inputs)", fontsize=9)
    figure.supylabel("detection rate", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
