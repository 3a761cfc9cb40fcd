"""Alibi Detect's drift detectors on windows, run under the alibi peer's virtualenv.

    python detect.py JOBS.json OUT.json

JOBS names the reference arrays (``reference.npz``: ``embeddings`` (n, dim) and ``probabilities``
(n, labels)), the detectors to run and the window files (``.npz`` with ``embeddings`` (trials,
window, dim) and ``probabilities`` (trials, window, labels)). Each detector is built once on the
reference, at p_val 0.05 as Alibi Detect's documentation sets a test's false-alarm rate, with the
PyTorch backend:

    alibi-mmd         MMDDrift on the embeddings (Gaussian RBF kernel, median heuristic,
                      100 permutations: its defaults)
    alibi-classifier  ClassifierDrift on the embeddings (a two-layer network told reference
                      from window, 75% to train and 25% to test: its defaults)
    alibi-bbsd        KSDrift on the model's probabilities, Bonferroni over labels (black-box
                      shift detection, "Failing Loudly")

OUT gets, per detector and window file, each window's drift decision and seconds.
"""

import json
import sys
import time

import numpy as np
import torch
from alibi_detect.cd import ClassifierDrift, KSDrift, MMDDrift


def build(name: str, reference: dict) -> object:
    """The detector ``name`` fitted on the reference arrays."""
    if name == "alibi-mmd":
        return MMDDrift(reference["embeddings"], backend="pytorch", p_val=0.05)
    if name == "alibi-classifier":
        dim = reference["embeddings"].shape[1]
        model = torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
        return ClassifierDrift(
            reference["embeddings"], model, backend="pytorch", p_val=0.05, preds_type="logits"
        )
    if name == "alibi-bbsd":
        return KSDrift(reference["probabilities"], p_val=0.05)
    raise SystemExit(f"unknown detector {name!r}")


def main() -> None:
    with open(sys.argv[1]) as file:
        jobs = json.load(file)
    torch.manual_seed(0)
    with np.load(jobs["reference"]) as data:
        reference = {key: data[key].astype(np.float32) for key in data.files}
    results: dict = {}
    for name in jobs["detectors"]:
        detector = build(name, reference)
        column = "probabilities" if name == "alibi-bbsd" else "embeddings"
        for path in jobs["windows"]:
            with np.load(path) as data:
                windows = data[column].astype(np.float32)
            decisions, seconds = [], []
            for window in windows:
                start = time.perf_counter()
                decisions.append(bool(detector.predict(window)["data"]["is_drift"]))
                seconds.append(time.perf_counter() - start)
            results.setdefault(name, {})[path] = {"drift": decisions, "seconds": seconds}
    with open(sys.argv[2], "w") as file:
        json.dump(results, file)


if __name__ == "__main__":
    main()
