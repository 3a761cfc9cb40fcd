"""`make gpu-check`: the GPU serving path end to end (load, batch, swap), with throughput.

Trains two small versions on the demo data with the bundled MiniLM, serves the production one
with ``resources={"gpu": 1}``, measures closed-loop throughput, promotes the other under load
and checks the swap lost no request. Exits 0 with "skipped" where CUDA is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console

from demo.traffic import Traffic, TrafficStats, send_traffic

console = Console()


def cuda_available() -> bool:
    """True when torch sees a CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def train_versions(home: Path, base_model: str = "minilm") -> tuple[str, str]:
    """Two versions of ``gpu-check`` on the demo data: v1 (production) and v2 (candidate)."""
    from demo.data import write_demo_data
    from training.config import TrainingConfig
    from training.pipeline import train_model
    from training.registry import ModelRegistry

    data = write_demo_data(home / "data")["train"]
    registry = ModelRegistry(home / "bentoml")
    tags = []
    for seed in (1, 2):
        config = TrainingConfig(name="gpu-check", strategy="head", seed=seed, base_model=base_model)
        version = train_model(data, config, registry=registry, console=console).version
        assert version is not None
        tags.append(version.version)
    return tags[0], tags[1]


def check_swap_under_load(url: str, texts: list[str], home: Path, new_version: str) -> tuple[int, int, float]:
    """Promote ``new_version`` while clients send requests; (requests, failures, seconds to swap)."""
    from training.registry import ModelRegistry

    start = time.monotonic()
    promoted: list[float] = []
    swapped: list[float] = []

    def follow(stats: TrafficStats) -> bool:
        now = time.monotonic()
        if not promoted and now - start > 2.0:
            ModelRegistry(home / "bentoml").promote(f"gpu-check:{new_version}", reason="gpu-check swap")
            promoted.append(now)
        if promoted and not swapped and stats.answers and stats.answers[-1].version == new_version:
            swapped.append(now - promoted[0])
        return bool(promoted) and (bool(swapped) or now - promoted[0] > 10)

    stats = send_traffic(url, Traffic(texts), concurrency=16, repeat=True, until=follow)
    return stats.requests, stats.failed, swapped[0] if swapped else float("nan")


def measure_throughput(url: str, texts: list[str]) -> bool:
    """Print req/s and latency at concurrency 1, 32 and 128; True when no request failed."""
    failed = 0
    for concurrency in (1, 32, 128):
        result = send_traffic(url, Traffic(texts), concurrency=concurrency, duration_s=5.0, repeat=True)
        p50, p99 = result.percentile(50), result.percentile(99)
        console.print(
            f"concurrency {concurrency:>3}: {result.rps:7.1f} req/s  p50 {p50:6.1f} ms  "
            f"p99 {p99:6.1f} ms  errors {result.failed}"
        )
        failed += result.failed
    return failed == 0


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when it passed or was skipped, 1 when it failed.

    Args:
        argv: command-line arguments; ``--base-model`` takes a local model directory instead of
            the bundled MiniLM (for machines without the weights package; also read from
            ``REFIT_GPU_CHECK_BASE_MODEL``).
    """
    parser = argparse.ArgumentParser(description="GPU serving path end to end")
    parser.add_argument("--base-model", default=os.environ.get("REFIT_GPU_CHECK_BASE_MODEL", "minilm"))
    args = parser.parse_args(argv)
    if not cuda_available():
        console.print("gpu-check: skipped (CUDA is not available on this machine)")
        return 0
    import pandas as pd

    from demo.processes import start_service

    home = Path(tempfile.mkdtemp(prefix="refit-gpu-check-"))
    v1, v2 = train_versions(home, args.base_model)
    texts = list(pd.read_csv(home / "data" / "traffic.csv")["text"])
    env = {
        "BENTOML_HOME": str(home / "bentoml"),
        "REFIT_SERVE_MODEL": "gpu-check",
        "REFIT_SERVE_REGISTRY_HOME": str(home / "bentoml"),
        "REFIT_SERVE_GPUS": "1",
        "REFIT_SERVE_BACKEND": "torch",
    }
    server = start_service(env, home / "service.log")
    try:
        server.wait_ready()
        info = httpx.get(f"{server.url}/model", timeout=10).json()
        console.print(f"serving {info['name']}:{info['version']} on {info['device']} ({info['backend']})")
        ok = info["device"].startswith("cuda") and info["version"] == v1
        ok &= measure_throughput(server.url, texts)
        requests, failures, seconds = check_swap_under_load(server.url, texts, home, v2)
        console.print(
            f"swap to {v2}: after {seconds:.1f} s, {requests} requests during it, {failures} failed"
        )
        ok &= failures == 0 and seconds < 10
    finally:
        server.stop()
    console.print("gpu-check: " + ("passed" if ok else "[red]FAILED[/]"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
