"""Serving load benchmark: the in-process limit, Refit (torch, ONNX, int8 ONNX) and a naive server.

Measured in interleaved rounds (round r: the in-process limit, then each server alone at every
concurrency), so machine noise hits each system alike; each cell is the median over rounds.

    python -m benchmarks.serve_load --data ../shared/datasets/banking77
    python -m benchmarks.serve_load --modality image --data ../shared/datasets/magnetic_tiles

Writes ``benchmarks/results/serve_load.json`` (rows: system, concurrency, rps, p50_ms, p95_ms,
p99_ms, mean_batch, errors, rss_mb) and ``serve_load.md``; with ``--modality image``,
``serve_images.json`` and ``.md`` in the same format: one tile image per request (base64 JSON)
from the 30% test split, served by EfficientNet-Lite0 (`head`) trained on the other 70%.

With ``--peers`` (texts), the same version's ONNX export behind other servers, each in its own
virtualenv (``benchmarks/serve_peers.py``): ``naive-onnx``, ``litserve``, ``mosec``,
``ray-serve``, ``triton``; each peer's batching knobs are tuned first, then the best setting is
measured in the interleaved rounds beside ``refit-onnx`` and an in-process limit taken in every
layout of processes x threads. Writes ``serve_peers.json`` (same rows), ``.md`` and ``.png``::

    python -m benchmarks.serve_load --peers --data ../shared/datasets/banking77
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from rich.console import Console
from rich.progress import Progress

from benchmarks.peers import PeerUnavailable
from benchmarks.serve_load_report import (
    check_targets,
    plot_peers,
    render_markdown,
    render_peers_markdown,
    summarise,
)
from benchmarks.serve_peers import (
    SERVERS,
    SERVING_PEERS,
    Tuning,
    best_limit,
    check_peer_targets,
    describe_knobs,
    knob_grid,
    measure_peer,
    os_cores,
    peer_versions,
    start_peer,
    stop_tree,
    tune_peer,
    warm_up,
    write_spec,
)
from benchmarks.serve_peers import measure_limit as measure_limit_layouts
from benchmarks.train_banking77 import load_banking77
from demo.processes import LoopbackProcess, free_port, start_process, start_service
from demo.traffic import Traffic, send_traffic
from service.predictor import load_model
from training.config import TrainingConfig
from training.console import quiet_transformers
from training.data import stratified_split
from training.onnx_export import export_version
from training.onnx_files import read_export_record
from training.pipeline import train_model
from training.registry import ModelRegistry, ModelVersion

RESULTS = Path(__file__).resolve().parent / "results"
console = Console()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modality", choices=("text", "image"), default="text")
    parser.add_argument("--data", type=Path, default=None, help="BANKING77, or the magnetic tiles for images")
    parser.add_argument("--home", type=Path, default=Path("benchmarks/.serve-home"), help="registry home")
    parser.add_argument("--model", default=None, help="registry model name (trained if absent)")
    parser.add_argument("--base-model", default=None, help="default: the modality's")
    parser.add_argument("--strategy", default="head", help="serving cost is the same for every strategy")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit-batches", default="1,8,16,32,64,128")
    parser.add_argument("--limit-texts", type=int, default=1024, help="texts per in-process timing")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-latency-ms", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None, help="results file stem (serve_load or serve_images)")
    parser.add_argument(
        "--together",
        action="store_true",
        help="keep every server up for the whole run (idle ones compete for cores)",
    )
    parser.add_argument("--systems", default="", help="only these servers (comma-separated; default all)")
    parser.add_argument(
        "--peers",
        nargs="?",
        const=",".join(SERVING_PEERS),
        default=None,
        help=f"measure serving peers beside refit-onnx (comma-separated; default {','.join(SERVING_PEERS)})",
    )
    parser.add_argument("--tune-duration", type=float, default=5.0, help="seconds per peer setting tried")
    parser.add_argument("--tune-concurrency", type=int, default=32)
    parser.add_argument("--limit-seconds", type=float, default=3.0, help="--peers: seconds per limit cell")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE[,KEY=VALUE]",
        help="also measure each Refit server with these REFIT_SERVE_* settings, as system <name>:LABEL",
    )
    args = parser.parse_args(argv)
    args.variants = parse_variants(args.variant)
    image = args.modality == "image"
    args.data = args.data or Path("../shared/datasets/" + ("magnetic_tiles" if image else "banking77"))
    args.model = args.model or ("tiles" if image else "banking77")
    args.name = args.name or ("serve_images" if image else "serve_peers" if args.peers else "serve_load")
    if args.peers is not None:
        unknown = sorted({p for p in args.peers.split(",") if p} - set(SERVING_PEERS))
        if unknown:
            parser.error(f"--peers: unknown {unknown}; expected some of {', '.join(SERVING_PEERS)}")
        if image:
            parser.error("--peers measures text serving only (the peers serve the text ONNX export)")
    return args


def parse_variants(specs: list[str]) -> dict[str, dict[str, str]]:
    """``LABEL:KEY=VALUE,...`` options as {label: environment}."""
    variants = {}
    for spec in specs:
        label, _, settings = spec.partition(":")
        pairs = [item.split("=", 1) for item in settings.split(",") if item]
        if not label or not pairs or any(len(pair) != 2 for pair in pairs):
            raise SystemExit(f"--variant expects LABEL:KEY=VALUE[,KEY=VALUE], got {spec!r}")
        variants[label] = dict(pairs)
    return variants


def load_requests(args: argparse.Namespace) -> tuple[pd.DataFrame, list[Any]]:
    """The rows to train on and the inputs to send: BANKING77's train and test texts, or the
    tiles' 70% split (paths, labels) and the bytes of the other 30%."""
    if args.modality == "text":
        train, test = load_banking77(args.data)
        return train, list(test["text"])
    manifest = pd.read_csv(args.data / "manifest.csv")
    manifest["path"] = [str((args.data / p).resolve()) for p in manifest["path"]]
    train, _, test = stratified_split(manifest, (0.0, 0.3), seed=0)
    return train[["path", "label"]], [Path(p).read_bytes() for p in test["path"]]


def ensure_model(args: argparse.Namespace, train: pd.DataFrame) -> ModelVersion:
    """The production version of ``args.model``, trained on ``train`` and exported if missing."""
    registry = ModelRegistry(args.home)
    if not registry.versions(args.model):
        data = args.home / f"{args.model}-train.csv"
        data.parent.mkdir(parents=True, exist_ok=True)
        train.to_csv(data, index=False)
        config = TrainingConfig(
            name=args.model, base_model=args.base_model, strategy=args.strategy, modality=args.modality
        )
        train_model(data, config, registry=registry, console=console)
    version = registry.get(f"{args.model}:production")
    int8 = "onnx-int8" in backends_for(benchmark_device())
    record = read_export_record(version)
    if record is None or (int8 and "int8" not in record):
        export_version(version, quantize=int8)
    return version


def measure_limit(
    models: dict[str, Any], texts: list[str], batches: list[int], n: int
) -> dict[tuple[str, int], dict[str, Any]]:
    """Texts/s of each loaded backend called in-process, per batch size: one round's cells."""
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for backend, model in models.items():
        for size in batches:
            sample = texts[: max(size, min(n, len(texts)))]
            timings = []
            for start in range(0, len(sample) - size + 1, size):
                t0 = time.perf_counter()
                model.classify(sample[start : start + size])
                timings.append((time.perf_counter() - t0) * 1000)
            cells[(f"limit:{backend}", size)] = {
                "rps": len(timings) * size / (sum(timings) / 1000),
                "p50_ms": statistics.median(timings),
                "p95_ms": _percentile(timings, 95),
                "p99_ms": _percentile(timings, 99),
                "mean_batch": float(size),
                "errors": 0,
            }
    return cells


def load_limit_models(version: ModelVersion) -> dict[str, Any]:
    """The version on every backend of this machine's device, loaded in this process; an int8
    export that lost too much accuracy loads as the float one, already there, and is left out."""
    device = benchmark_device()
    models = {}
    for backend in backends_for(device):
        model = load_model(version, backend, device, os.cpu_count() or 1, 3)
        if model.backend.name == backend:
            models[backend] = model
    return models


def pick_limit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the in-process backend with the best median texts/s as the ``limit`` rows."""
    backends = {r["system"] for r in rows if r["system"].startswith("limit:")}
    best = max(backends, key=lambda b: max(r["rps"] for r in rows if r["system"] == b))
    console.print(f"limit: {best.removeprefix('limit:')} backend")
    limit = [{**r, "system": "limit"} for r in rows if r["system"] == best]
    return limit + [r for r in rows if not r["system"].startswith("limit:")]


def benchmark_device() -> str:
    """``cuda`` where torch sees a GPU: the limit, the naive server and the services use it."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine_accelerator() -> str:
    """The GPU's name, or CPU."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def backends_for(device: str) -> tuple[str, ...]:
    """The backends that run on ``device``: ONNX on CUDA only with onnxruntime's CUDA provider,
    int8 ONNX on CPU only (its int8 kernels are CPU kernels)."""
    import onnxruntime

    if device == "cuda":
        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        return ("torch", "onnx") if cuda else ("torch",)
    return ("torch", "onnx", "onnx-int8")


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def system_names(only: str = "", variants: dict[str, dict[str, str]] | None = None) -> list[str]:
    """The servers to measure: the Refit backends for this device and the naive one (or ``only``
    those), then each Refit one again per variant (``refit-onnx:LABEL``)."""
    names = [f"refit-{backend}" for backend in backends_for(benchmark_device())] + ["naive"]
    names = [n for n in names if not only or n in only.split(",")]
    return names + [f"{n}:{label}" for label in variants or {} for n in names if n.startswith("refit-")]


def start_system(name: str, version: ModelVersion, args: argparse.Namespace, logs: Path) -> LoopbackProcess:
    """Start one server (not yet ready): ``refit-torch``, ``refit-onnx``, ``refit-onnx-int8`` or ``naive``."""
    if name == "naive":
        return start_naive(version, logs / "naive.log")
    name, _, label = name.partition(":")
    device = benchmark_device()
    env = {
        "BENTOML_HOME": str(args.home),
        "REFIT_SERVE_MODEL": version.name,
        "REFIT_SERVE_REGISTRY_HOME": str(args.home),
        "REFIT_SERVE_MAX_BATCH_SIZE": str(args.max_batch_size),
        "REFIT_SERVE_MAX_LATENCY_MS": str(args.max_latency_ms),
        "REFIT_SERVE_MAX_INFLIGHT": "4096",
        "REFIT_SERVE_LOG_URL": f"sqlite:///{logs / 'inference.db'}",
        "REFIT_SERVE_BACKEND": name.removeprefix("refit-"),
        "REFIT_SERVE_DEVICE": device,
    }
    if device == "cuda":
        env["REFIT_SERVE_GPUS"] = "1"
    env.update(args.variants.get(label, {}))
    return start_service(env, logs / f"{name}{'-' + label if label else ''}.log")


def run_rounds(
    version: ModelVersion, args: argparse.Namespace, texts: list[str], concurrencies: list[int]
) -> tuple[dict[tuple[str, int], list[dict[str, Any]]], dict[str, float]]:
    """Every round measures every system at every concurrency; the cells and each system's RSS.

    Each system runs alone on the machine: started, warmed up, measured and stopped within its
    turn of the round. With all of them up at once (``--together``), the idle ones' background
    threads and the previous one's log writer took cores from the one under load.
    """
    logs = args.home / "serve-logs"
    names = system_names(args.systems, args.variants)
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    limit_models = load_limit_models(version)
    rss: dict[str, float] = {f"limit:{b}": _rss_mb() for b in limit_models}
    limit_batches = [int(b) for b in args.limit_batches.split(",")]
    together = {name: start_system(name, version, args, logs) for name in names} if args.together else {}
    try:
        for server in together.values():
            server.wait_ready()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("load", total=args.rounds * len(concurrencies) * len(names))
            for _ in range(args.rounds):
                # The limit is measured in every round too: a single measurement taken while the
                # machine happened to be quiet (or busy) would move every ratio against it.
                progress.update(task, description="in-process limit")
                for key, cell in measure_limit(limit_models, texts, limit_batches, args.limit_texts).items():
                    cells.setdefault(key, []).append(cell)
                for name in names:
                    server = together.get(name) or start_system(name, version, args, logs)
                    try:
                        for concurrency, cell in measure_system(name, server, texts, concurrencies, args):
                            cells.setdefault((name, concurrency), []).append(cell)
                            progress.update(task, advance=1, description=f"{name} c={concurrency}")
                        rss[name] = max(rss.get(name, 0.0), server.worker_rss_mb())
                    finally:
                        if name not in together:
                            server.stop()
    finally:
        for server in together.values():
            server.stop()
    return cells, rss


def measure_system(
    name: str, server: LoopbackProcess, texts: list[str], concurrencies: list[int], args: argparse.Namespace
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Wait for ``server``, warm it up, then yield (concurrency, cell) for each concurrency."""
    server.wait_ready()
    warm_up = min(2.0, args.duration)
    send_traffic(server.url, Traffic(texts), concurrency=4, duration_s=warm_up, repeat=True)
    for concurrency in concurrencies:
        yield concurrency, measure_cell(name, server, texts, concurrency, args.duration)


def start_naive(version: ModelVersion, log_path: Path) -> LoopbackProcess:
    """The hand-written FastAPI server, under uvicorn with one worker."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "benchmarks.naive_server:app", "--port", str(port)]
    command += ["--log-level", "warning"]
    env = {"REFIT_NAIVE_MODEL_DIR": str(version.path / "model")}
    return start_process(command, env, log_path, f"http://127.0.0.1:{port}", "/readyz")


def batch_counters(url: str) -> tuple[float, float]:
    """(sum, count) of refit_batch_texts from a Refit server's /metrics."""
    total = count = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("refit_batch_texts_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("refit_batch_texts_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def measure_cell(
    system: str, server: LoopbackProcess, texts: list[str], concurrency: int, duration: float
) -> dict[str, Any]:
    """One closed-loop run against one server."""
    before = batch_counters(server.url) if system != "naive" else (0.0, 0.0)
    result = send_traffic(
        server.url, Traffic(texts), concurrency=concurrency, duration_s=duration, repeat=True
    )
    after = batch_counters(server.url) if system != "naive" else (0.0, 0.0)
    calls = after[1] - before[1]
    mean_batch = (after[0] - before[0]) / calls if calls else 1.0
    if result.failed:
        console.print(f"[yellow]{system} c={concurrency}: {result.failed} errors {result.failures[:5]}")
    return {
        "rps": result.rps,
        "p50_ms": result.percentile(50),
        "p95_ms": result.percentile(95),
        "p99_ms": result.percentile(99),
        "mean_batch": mean_batch,
        "errors": result.failed,
    }


def tune_peers(
    names: list[str], spec: Path, texts: list[str], args: argparse.Namespace, notes: dict[str, str]
) -> tuple[dict[str, dict[str, Any]], dict[str, Tuning]]:
    """Each peer's best batching setting (naive-onnx has none); a peer that cannot be installed or
    started gets a note instead."""
    logs = args.home / "serve-logs" / "tuning"
    grid = knob_grid(args.max_batch_size, os_cores())
    knobs: dict[str, dict[str, Any]] = {}
    tuning: dict[str, Tuning] = {}
    for name in names:
        if not SERVERS[name].tuned:
            knobs[name] = {}
            continue
        try:
            tuning[name] = tune_peer(
                name, spec, texts, grid, args.tune_concurrency, args.tune_duration, logs, console.print
            )
        except (PeerUnavailable, RuntimeError, TimeoutError) as exc:
            notes[name] = str(exc)[-3000:]
            console.print(f"[yellow]{name} did not run: {notes[name].strip().splitlines()[-1]}")
            continue
        knobs[name] = tuning[name].best
    return knobs, tuning


def run_peer_rounds(
    version: ModelVersion, args: argparse.Namespace, texts: list[str], concurrencies: list[int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The limit in every layout, refit-onnx and each tuned peer, in interleaved rounds."""
    logs = args.home / "serve-logs"
    spec = write_spec(version, args.home / "peers")
    names = [p for p in args.peers.split(",") if p]
    notes: dict[str, str] = {}
    knobs, tuning = tune_peers(names, spec, texts, args, notes)
    systems = ["refit-onnx", *(f"refit-onnx:{label}" for label in args.variants), *knobs]
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    rss: dict[str, float] = {}
    batches = [int(b) for b in args.limit_batches.split(",")]
    for round_number in range(args.rounds):
        console.print(f"round {round_number + 1}/{args.rounds}: in-process limit")
        for key, cell in measure_limit_layouts(spec, texts, batches, args.limit_seconds, os_cores()).items():
            rss[key[0]] = max(rss.get(key[0], 0.0), cell.pop("rss_mb"))
            cells.setdefault(key, []).append(cell)
        for name in [s for s in systems if s not in notes]:
            console.print(f"round {round_number + 1}/{args.rounds}: {name}")
            try:
                if name.startswith("refit-"):
                    server = start_system(name, version, args, logs)
                    try:
                        measured = list(measure_system(name, server, texts, concurrencies, args))
                        rss[name] = max(rss.get(name, 0.0), server.worker_rss_mb())
                    finally:
                        server.stop()
                else:
                    server = start_peer(name, spec, knobs[name], logs)
                    try:
                        warm_up(name, server, texts, 2.0)
                        measured = [
                            (c, measure_peer(name, server, texts, c, args.duration)) for c in concurrencies
                        ]
                        rss[name] = max(rss.get(name, 0.0), server.worker_rss_mb())
                    finally:
                        stop_tree(server)
            except (RuntimeError, TimeoutError) as exc:
                notes[name] = f"failed in round {round_number + 1}: {exc}"[-3000:]
                continue
            for concurrency, cell in measured:
                failures = cell.pop("failures", [])
                if failures:
                    console.print(f"[yellow]{name} c={concurrency}: {cell['errors']} errors {failures}")
                cells.setdefault((name, concurrency), []).append(cell)
    # A system that failed in a later round keeps no half-measured cells.
    cells = {key: runs for key, runs in cells.items() if key[0] not in notes}
    rows, winners = best_limit(summarise(cells, rss))
    ran = [n for n in names if n in knobs and n not in notes]
    tried = {
        name: [(describe_knobs(k), c["rps"], c["p99_ms"], c["errors"], k == t.best) for k, c in t.tried]
        for name, t in tuning.items()
    }
    extra = {"winners": winners, "notes": notes, "tuning": tried, "ran": ran, "versions": peer_versions(ran)}
    return rows, extra


def write_peer_results(
    rows: list[dict[str, Any]], extra: dict[str, Any], version: ModelVersion, args: argparse.Namespace
) -> list[str]:
    """serve_peers.json (rows), .md (tables, tuning, notes, targets) and .png; the target lines."""
    targets = check_peer_targets(rows)
    env = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {machine_accelerator()}",
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rounds": args.rounds,
        "duration": args.duration,
        "model": f"{version.name}:{version.version} ({version.manifest.get('base_model', '?')}, ONNX fp32)",
        "ran": extra["ran"],
        "versions": extra["versions"],
        "tune_concurrency": args.tune_concurrency,
        "tune_duration": args.tune_duration,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    markdown = render_peers_markdown(rows, targets, env, extra["tuning"], extra["winners"], extra["notes"])
    (args.out / f"{args.name}.md").write_text(markdown.replace("serve_peers.png", f"{args.name}.png"))
    plot_peers(rows, args.out / f"{args.name}.png")
    return targets


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark, write JSON and markdown, return the rows."""
    logging.basicConfig(level=logging.WARNING)
    quiet_transformers()
    args = parse_args(argv)
    train, texts = load_requests(args)
    version = ensure_model(args, train)
    if args.peers is not None:
        rows, extra = run_peer_rounds(version, args, texts, [int(c) for c in args.concurrency.split(",")])
        for line in write_peer_results(rows, extra, version, args):
            console.print(line)
        return rows
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cells, rss = run_rounds(version, args, texts, concurrencies)
    rows = pick_limit(summarise(cells, rss))
    targets = check_targets(rows, "images" if args.modality == "image" else "texts")
    env = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {machine_accelerator()}",
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rounds": args.rounds,
        "layout": "all servers up together" if args.together else "one server up at a time",
        "duration": args.duration,
        "inputs": "images" if args.modality == "image" else "texts",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(render_markdown(rows, targets, env))
    for line in targets:
        console.print(line)
    return rows


if __name__ == "__main__":
    main()
