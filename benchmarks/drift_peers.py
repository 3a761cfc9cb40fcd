"""Peer drift detectors on drift_power's windows: Alibi Detect's MMD, classifier and BBSD tests, and
NannyML's univariate and multivariate (reconstruction error) drift.

The windows are drawn as Refit's are (same scenarios, sizes and sampling) and handed to the peer as
arrays: the encoder's embeddings of each text and the model's probabilities, which is what those
detectors read. The reference is the version's profile, Refit's own reference rows. Each detector
runs at p_val 0.05 in the alibi peer's virtualenv (``benchmarks/peers/alibi``). NannyML's
detectors read Refit's own features of each window (the check's columns), in the nannyml peer's
virtualenv (``benchmarks/peers/nannyml``).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.peers import run_peer
from monitoring.reference import Reference
from training.artifacts import load_version_profile

ALIBI_DETECTORS = ("alibi-mmd", "alibi-classifier", "alibi-bbsd")
NANNYML_DETECTORS = ("nannyml-univariate", "nannyml-multivariate")
PEER_DETECTORS = ALIBI_DETECTORS + NANNYML_DETECTORS
PAIRED_DETECTOR = "refit-peer-windows"  # Refit's check on the windows the peers were measured on


def run_alibi(
    reference: Reference,
    cells: dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]],
    detectors: list[str],
) -> list[dict[str, Any]]:
    """drift_power rows of each Alibi detector on each cell's windows.

    Args:
        reference: the version's reference (its profile rows are the detectors' reference).
        cells: (scenario, window size) -> that cell's windows as (embeddings, probabilities).
        detectors: names from ``ALIBI_DETECTORS``.

    Raises:
        PeerUnavailable: the alibi peer could not be installed, or its run failed.
    """
    profile = load_version_profile(reference.version)
    with tempfile.TemporaryDirectory(prefix="refit-drift-peers-") as scratch:
        folder = Path(scratch)
        np.savez(
            folder / "reference.npz",
            embeddings=np.stack(profile["embedding"].to_numpy()).astype(np.float32),
            probabilities=np.stack(profile["probabilities"].to_numpy()).astype(np.float32),
        )
        files = {}
        for (scenario, size), windows in cells.items():
            path = folder / f"{scenario}-{size}.npz"
            np.savez(
                path,
                embeddings=np.stack([embeddings for embeddings, _ in windows]),
                probabilities=np.stack([probabilities for _, probabilities in windows]),
            )
            files[str(path)] = (scenario, size)
        jobs = {"reference": str(folder / "reference.npz"), "detectors": detectors, "windows": list(files)}
        (folder / "jobs.json").write_text(json.dumps(jobs))
        count = sum(len(found) for found in cells.values())
        run_peer("alibi", "detect.py", str(folder / "jobs.json"), str(folder / "out.json"),
                 timeout=alibi_timeout(detectors, count))  # fmt: skip
        measured = json.loads((folder / "out.json").read_text())
    return peer_rows(measured, files, detectors)


def alibi_timeout(detectors: list[str], windows: int) -> float:
    """Seconds an Alibi run may take: an hour, or 30 s a window for each MMD or classifier test if
    that is longer (measured on 2 cores at 1,000 texts against 1,760 reference rows: MMD 1.8-2.2 s
    a window alone, 7.7 s beside another run; the classifier test 0.14-0.17 s; BBSD's KS tests
    less), room for a busier or slower machine."""
    slow = sum(name != "alibi-bbsd" for name in detectors)
    return max(3600.0, 30.0 * windows * slow)


def run_nannyml(
    reference: Reference, cells: dict[tuple[str, int], list[pd.DataFrame]], detectors: list[str]
) -> list[dict[str, Any]]:
    """drift_power rows of each NannyML detector on each cell's windows (Refit's features of each).

    Raises:
        PeerUnavailable: the nannyml peer could not be installed, or its run failed.
    """
    features = reference.features
    categorical = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    with tempfile.TemporaryDirectory(prefix="refit-drift-peers-") as scratch:
        folder = Path(scratch)
        features.reset_index(drop=True).to_parquet(folder / "reference.parquet")
        files = {}
        for (scenario, size), windows in cells.items():
            path = folder / f"{scenario}-{size}.parquet"
            pd.concat(windows, ignore_index=True).to_parquet(path)
            files[str(path)] = (scenario, size)
        jobs = {
            "reference": str(folder / "reference.parquet"),
            "categorical": categorical,
            "detectors": detectors,
            "windows": {path: size for path, (_, size) in files.items()},
        }
        (folder / "jobs.json").write_text(json.dumps(jobs))
        run_peer("nannyml", "drift.py", str(folder / "jobs.json"), str(folder / "out.json"))
        measured = json.loads((folder / "out.json").read_text())
    return peer_rows(measured, files, detectors)


def peer_rows(
    measured: dict[str, Any], files: dict[str, tuple[str, int]], detectors: list[str]
) -> list[dict[str, Any]]:
    """drift_power rows from a peer's decisions and seconds per window file."""
    return [
        {
            "detector": detector,
            "scenario": files[path][0],
            "window": files[path][1],
            "rate": round(float(np.mean(found["drift"])), 4),
            "trials": len(found["drift"]),
            "seconds_per_check": round(statistics.median(found["seconds"]), 3),
        }
        for detector in detectors
        for path, found in measured[detector].items()
    ]


def uncalibrated_note(rows: list[dict[str, Any]], limit: float = 0.05) -> str:
    """A markdown line naming each peer whose false-alarm rate (scenario ``none``) exceeds ``limit``.

    Refit's own check on the peers' windows is not a peer: its false-alarm rate is the ``refit``
    row's, measured on many more windows."""
    peers = [r for r in rows if r["detector"] not in ("refit", "evidently-default", PAIRED_DETECTOR)]
    over = [
        f"{r['detector']} (w={r['window']}: {r['rate']:.2f})"
        for r in peers
        if r["scenario"] == "none" and r["rate"] > limit
    ]
    if not over:
        return ""
    return f"Uncalibrated (false-alarm rate on `none` above {limit}): " + ", ".join(over) + "."
