"""Serving peers for ``serve_load.py --peers``: the same ONNX model behind other servers.

Every peer serves the version's ONNX export with its tokenizer through ``peers/onnx_text.py``,
each under its own virtualenv (``benchmarks/peers/<name>``): LitServe, Mosec, Ray Serve and
Triton (PyTriton). ``naive-onnx`` is the naive FastAPI server on the same ONNX session, so that
the batching gain is not confused with ONNX Runtime's gain over torch. The ``limit`` is the model
called in-process with no server, in every layout of processes and threads that fits the cores,
the best layout per batch size.

Each peer's batching knobs are tuned first on a small grid (batch wait x processes/threads, at
concurrency 32, one short run each); the best setting is then measured in the interleaved rounds
beside Refit.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.peers import NO_TELEMETRY, PEERS, peer_python
from demo.processes import LoopbackProcess, free_port, start_process
from demo.traffic import Protocol, Traffic, send_traffic
from training.artifacts import read_labels
from training.onnx_export import ensure_export
from training.processors import CLASSIFIER_FILE
from training.registry import ModelVersion

SERVING_PEERS = ("naive-onnx", "litserve", "mosec", "ray-serve", "triton")
TRITON_MODEL = "classifier"


@dataclass(frozen=True)
class PeerServer:
    """How to start one peer and talk to it."""

    ready_path: str
    protocol: Protocol = field(default_factory=Protocol)
    tuned: bool = True  # has batching knobs to tune


def triton_request(text: str | bytes) -> dict[str, Any]:
    """A KServe v2 inference request carrying one text."""
    return {"inputs": [{"name": "texts", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}


def triton_answer(body: dict[str, Any]) -> dict[str, Any]:
    """The prediction in a KServe v2 response."""
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    return {"label": outputs["label"][0], "confidence": outputs["confidence"][0]}


SERVERS = {
    "naive-onnx": PeerServer("/readyz", tuned=False),
    "litserve": PeerServer("/health"),
    "mosec": PeerServer("/"),
    "ray-serve": PeerServer("/readyz"),
    "triton": PeerServer(
        f"/v2/models/{TRITON_MODEL}/ready",
        Protocol(f"/v2/models/{TRITON_MODEL}/infer", triton_request, triton_answer),
    ),
}


def knob_grid(max_batch_size: int, cores: int) -> list[dict[str, int | float]]:
    """The settings tried for each peer: batch wait 2 or 10 ms, one process with every core's
    thread or one single-threaded process per core."""
    layouts = [(1, cores), (cores, 1)] if cores > 1 else [(1, 1)]
    return [
        {"max_batch_size": max_batch_size, "max_wait_ms": wait, "workers": workers, "threads": threads}
        for workers, threads in layouts
        for wait in (2.0, 10.0)
    ]


def describe_knobs(knobs: dict[str, int | float]) -> str:
    """``batch<=64, wait 10 ms, 2 x 1 thread`` for the report."""
    return (
        f"batch<={knobs['max_batch_size']}, wait {knobs['max_wait_ms']:g} ms, "
        f"{knobs['workers']} x {knobs['threads']} thread{'s' if knobs['threads'] != 1 else ''}"
    )


def write_spec(version: ModelVersion, folder: Path) -> Path:
    """``served.json``: the version's ONNX export, tokenizer, labels and maximum length."""
    model = version.path / "model"
    classifier = json.loads((model / CLASSIFIER_FILE).read_text())
    spec = {
        "onnx": str(ensure_export(version)),
        "tokenizer": str(model),
        "labels": read_labels(version),
        "max_length": int(classifier.get("max_length") or 128),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "served.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def start_peer(name: str, spec: Path, knobs: dict[str, int | float], logs: Path) -> LoopbackProcess:
    """Start one peer (not yet ready) with ``knobs``.

    Raises:
        PeerUnavailable: its virtualenv could not be created.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = logs / f"{name}.log"
    if name == "naive-onnx":
        command = [sys.executable, "-m", "uvicorn", "benchmarks.naive_server:app", "--port", str(port)]
        env = {"REFIT_NAIVE_SPEC": str(spec)}
        return start_process([*command, "--log-level", "warning"], env, log, url, SERVERS[name].ready_path)
    command = [
        str(peer_python(name)),
        str(PEERS / name / "serve.py"),
        "--spec",
        str(spec),
        "--port",
        str(port),
    ]
    command += ["--max-batch-size", str(knobs["max_batch_size"]), "--max-wait-ms", str(knobs["max_wait_ms"])]
    command += ["--workers", str(knobs["workers"]), "--threads", str(knobs["threads"])]
    env = {**NO_TELEMETRY, "PYTHONUNBUFFERED": "1"}
    return start_process(command, env, log, url, SERVERS[name].ready_path)


def stop_tree(server: LoopbackProcess) -> None:
    """Stop a peer and whatever it started (Ray's raylet, Triton's server, Mosec's workers)."""
    try:
        children = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    server.stop(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()


def measure_peer(
    name: str, server: LoopbackProcess, texts: list[str], concurrency: int, duration: float
) -> dict[str, Any]:
    """One closed-loop run against a peer; a peer reports no batch sizes (``mean_batch`` None,
    except the naive server's 1)."""
    result = send_traffic(
        server.url,
        Traffic(texts),
        concurrency=concurrency,
        duration_s=duration,
        repeat=True,
        protocol=SERVERS[name].protocol,
    )
    return {
        "rps": result.rps,
        "p50_ms": result.percentile(50),
        "p95_ms": result.percentile(95),
        "p99_ms": result.percentile(99),
        "mean_batch": 1.0 if name == "naive-onnx" else None,
        "errors": result.failed,
        "failures": result.failures[:3],
    }


def warm_up(name: str, server: LoopbackProcess, texts: list[str], seconds: float) -> None:
    """Wait until ready, then send a little traffic (first calls allocate, compile, fork)."""
    server.wait_ready(timeout=300)
    send_traffic(
        server.url,
        Traffic(texts),
        concurrency=4,
        duration_s=seconds,
        repeat=True,
        protocol=SERVERS[name].protocol,
    )


@dataclass
class Tuning:
    """What was tried for one peer and what won."""

    tried: list[tuple[dict[str, int | float], dict[str, Any]]] = field(default_factory=list)

    @property
    def best(self) -> dict[str, int | float]:
        """The setting with the most texts/s at the tuning concurrency, no errors first."""
        ranked = sorted(self.tried, key=lambda t: (t[1]["errors"] > 0, -t[1]["rps"]))
        return ranked[0][0]


def tune_peer(
    name: str,
    spec: Path,
    texts: list[str],
    grid: list[dict[str, int | float]],
    concurrency: int,
    duration: float,
    logs: Path,
    report: Callable[[str], None] = print,
) -> Tuning:
    """Measure ``name`` at ``concurrency`` under each setting of ``grid``, one server at a time."""
    tuning = Tuning()
    for knobs in grid:
        server = start_peer(name, spec, knobs, logs)
        try:
            warm_up(name, server, texts, 2.0)
            cell = measure_peer(name, server, texts, concurrency, duration)
        finally:
            stop_tree(server)
        report(f"{name} {describe_knobs(knobs)}: {cell['rps']:.0f} texts/s, p99 {cell['p99_ms']:.0f} ms")
        tuning.tried.append((knobs, cell))
    return tuning


def _limit_worker(
    spec: str,
    threads: int,
    texts: list[str],
    batches: list[int],
    duration: float,
    offset: int,
    barrier: Any,
    out: Any,
) -> None:
    from benchmarks.peers.onnx_text import OnnxTextClassifier

    model = OnnxTextClassifier(spec, threads)
    model.classify(texts[:8])
    position = offset
    for size in batches:
        barrier.wait()
        timings: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < duration:
            batch = [texts[(position + k) % len(texts)] for k in range(size)]
            position += size
            t0 = time.perf_counter()
            model.classify(batch)
            timings.append((time.perf_counter() - t0) * 1000)
        rss = psutil.Process().memory_info().rss / 2**20
        out.put((size, len(timings) * size, time.perf_counter() - start, timings, rss))


def measure_limit_layout(
    spec: Path, texts: list[str], batches: list[int], duration: float, processes: int, threads: int
) -> dict[int, dict[str, Any]]:
    """Texts/s of ``processes`` single-model processes of ``threads`` threads each, all calling the
    model at once on batches of each size for ``duration`` seconds; per batch size."""
    context = mp.get_context("spawn")
    barrier, out = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(
            target=_limit_worker,
            args=(str(spec), threads, texts, batches, duration, i * len(texts) // processes, barrier, out),
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    results: dict[int, list[tuple[int, float, list[float]]]] = {}
    rss = 0.0
    for _ in range(processes * len(batches)):
        size, done, elapsed, timings, worker_rss = out.get(timeout=600)
        results.setdefault(size, []).append((done, elapsed, timings))
        rss = max(rss, worker_rss)
    for worker in workers:
        worker.join()
    cells = {}
    for size, parts in results.items():
        timings = [t for _, _, part in parts for t in part]
        cells[size] = {
            "rps": sum(done / elapsed for done, elapsed, _ in parts),
            "p50_ms": statistics.median(timings),
            "p95_ms": float(np.percentile(timings, 95)),
            "p99_ms": float(np.percentile(timings, 99)),
            "mean_batch": float(size),
            "errors": 0,
            "rss_mb": rss,
        }
    return cells


def limit_layouts(cores: int) -> list[tuple[int, int]]:
    """(processes, threads) layouts that use every core: 1 x cores, cores x 1, and between."""
    return sorted({(p, cores // p) for p in range(1, cores + 1) if cores % p == 0})


def measure_limit(
    spec: Path, texts: list[str], batches: list[int], duration: float, cores: int
) -> dict[tuple[str, int], dict[str, Any]]:
    """The in-process limit in every layout: {("limit:PxT", batch): cell}."""
    cells = {}
    for processes, threads in limit_layouts(cores):
        layout = measure_limit_layout(spec, texts, batches, duration, processes, threads)
        cells |= {(f"limit:{processes}x{threads}", size): cell for size, cell in layout.items()}
    return cells


def best_limit(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Rows with one ``limit`` row per batch size (the best layout there) and which layout won."""
    layouts = [r for r in rows if r["system"].startswith("limit:")]
    best: dict[int, dict[str, Any]] = {}
    for row in layouts:
        if row["concurrency"] not in best or row["rps"] > best[row["concurrency"]]["rps"]:
            best[row["concurrency"]] = row
    winners = {size: row["system"].removeprefix("limit:") for size, row in best.items()}
    limit = [{**row, "system": "limit"} for _, row in sorted(best.items())]
    return limit + [r for r in rows if not r["system"].startswith("limit:")], winners


def check_peer_targets(rows: list[dict[str, Any]], refit: str = "refit-onnx") -> list[str]:
    """Refit against the best peer in the same run: throughput at 32 and 64, p99 at 8 and 32,
    errors, and its share of the in-process limit."""
    cell = {(r["system"], r["concurrency"]): r for r in rows}
    # Refit's variants (``refit-onnx:LABEL``) are measured beside it, not against it.
    systems = {r["system"] for r in rows}
    peers = sorted(s for s in systems if s != "limit" and not s.startswith("refit-"))
    lines = []
    for concurrency, key in ((32, "rps"), (64, "rps"), (8, "p99_ms"), (32, "p99_ms")):
        ours = cell.get((refit, concurrency))
        theirs = [cell[(p, concurrency)] for p in peers if (p, concurrency) in cell]
        if not ours or not theirs:
            continue
        if key == "rps":
            top = max(theirs, key=lambda r: r["rps"])
            verdict = "met" if ours["rps"] >= top["rps"] else "NOT met"
            lines.append(
                f"{refit} throughput at concurrency {concurrency}: {ours['rps']:.0f} texts/s vs best peer "
                f"{top['system']} {top['rps']:.0f} ({ours['rps'] / top['rps']:.2f}x; target >= 1x): {verdict}"
            )
        else:
            top = min(theirs, key=lambda r: r["p99_ms"])
            verdict = "met" if ours["p99_ms"] <= top["p99_ms"] else "NOT met"
            lines.append(
                f"{refit} p99 at concurrency {concurrency}: {ours['p99_ms']:.0f} ms vs best peer "
                f"{top['system']} {top['p99_ms']:.0f} ms (target <=): {verdict}"
            )
    errors = sum(r["errors"] for r in rows if r["system"] == refit)
    lines.append(f"{refit} errors over all runs: {errors} (target 0): {'met' if errors == 0 else 'NOT met'}")
    limit = max((r["rps"] for r in rows if r["system"] == "limit"), default=0.0)
    for concurrency in (32, 64):
        if (refit, concurrency) in cell and limit:
            share = cell[(refit, concurrency)]["rps"] / limit
            lines.append(
                f"{refit} at concurrency {concurrency}: {share:.0%} of the best in-process limit "
                f"({limit:.0f} texts/s)"
            )
    return lines


def peer_versions(names: list[str]) -> dict[str, str]:
    """Each peer's server package version, from its pinned requirements."""
    package = {"litserve": "litserve", "mosec": "mosec", "ray-serve": "ray", "triton": "nvidia-pytriton"}
    versions = {}
    for name in names:
        if name not in package:
            continue
        for line in (PEERS / name / "requirements.txt").read_text().splitlines():
            if line.lower().startswith(package[name] + "=="):
                versions[name] = f"{package[name]} {line.split('==')[1]}"
    return versions


def os_cores() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0))
