"""The command-line arguments every BANKING77 benchmark shares, and the config they train with."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from training.config import TrainingConfig

RESULTS = Path(__file__).resolve().parent / "results"


def banking77_parser(doc: str | None, home: str, name: str) -> argparse.ArgumentParser:
    """A parser with the data set, the registry home, the base model, the seed and the outputs.

    Args:
        doc: the benchmark module's docstring (its --help).
        home: the default registry home of the benchmark's versions.
        name: the default stem of its results files.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/banking77"))
    parser.add_argument("--home", type=Path, default=Path(home))
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=name)
    return parser


def benchmark_config(args: argparse.Namespace, name: str, **values: Any) -> TrainingConfig:
    """The training config of a benchmark's version: its strategy, base model, seed, max length."""
    common = {"strategy": args.strategy, "base_model": args.base_model, "seed": args.seed}
    return TrainingConfig(name=name, max_length=args.max_length, **common, **values)
