"""A candidate version trained by `refit train` in a child process with a time limit.

A crash or an out-of-memory kill of the child cannot take the monitor down; its output reaches
the monitor's log line by line as it comes.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from training.artifacts import CONFIG_FILE, MODEL_DIR, read_json, read_split
from training.config import ADAPTATION_STRATEGIES
from training.groups import GROUP
from training.onnx_files import read_export_record
from training.registry import ModelRegistry, ModelVersion
from training.spelling import SPELLING_FILE

logger = logging.getLogger(__name__)


def refit_command(*args: str) -> list[str]:
    """The `refit` command line run by this interpreter (a child process needs no PATH entry)."""
    return [sys.executable, "-m", "training", *args]


def train_candidate(
    production: ModelVersion,
    data: pd.DataFrame,
    registry: ModelRegistry,
    *,
    strategy: str | None,
    timeout_s: float,
    workdir: Path,
    export: bool = True,
    test: pd.DataFrame | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Run `refit train` on ``data`` in a child process; returns the new version.

    With ``export``, the child also exports the version to ONNX when production has an export,
    and quantises it when production was quantised.
    ``test``: production's test split as ``text`` and ``label`` rows (for an image version,
    ``text`` holds the image files); by default read from production. ``overrides``: config
    values that replace production's (an adaptation's target file, its base strategy).

    Raises:
        RuntimeError: the child failed, timed out, or registered nothing.
    """
    config = dict(read_json(production.path / CONFIG_FILE))
    # The strategy production was built with, not the `auto` it may have been asked for: climbing
    # the whole ladder again would cost minutes and could pick another strategy than the one the
    # gate compares against.
    # The candidate is tested on production's own test split, given as a test file: its registered
    # metrics compare with production's, and none of the (few) feedback rows of a new intent is
    # spent on a second test split. The file's name is what the new version's metrics name as their
    # test set (`refit models list`), so it says whose split it is.
    test_file = f"test-split-of-{production.name}-{production.version}.csv"
    data_path, config_path, test_path = (workdir / n for n in ("retrain.csv", "retrain.yaml", test_file))
    (read_split(production, "test") if test is None else test).to_csv(test_path, index=False)
    config.update(parent_version=production.version, test_file=str(test_path))
    # The tables written here hold `text` (for images: the image files) and `label` columns,
    # whatever the columns of production's own data were called.
    config.update(text_column="text", label_column="label")
    if config.get("group_column"):
        config["group_column"] = GROUP
    if config.get("modality") == "image":
        config["image_column"] = "text"
    config["strategy"] = strategy or production.manifest.get("strategy", config.get("strategy"))
    if config["strategy"] == "spelling" and not (overrides or {}).get("target_file"):
        # A corrector outlives its window: kept, the labelled texts' own words joining its lexicon
        # (a slip in a feedback text is still a slip), and the base trained on the corrected texts.
        lexicon = production.path / MODEL_DIR / SPELLING_FILE
        config.update(target_file=str(data_path), target_window=None, spelling_lexicon=str(lexicon))
    elif config["strategy"] in ADAPTATION_STRATEGIES and not (overrides or {}).get("target_file"):
        # Labels of the new domain replace an adaptation to it (whose target inputs were a window
        # long gone): production's base strategy is trained on them.
        config.update(strategy=config.get("adapt_base") or "head", target_file=None, target_window=None)
    config.update(overrides or {})
    data.to_csv(data_path, index=False)
    config_path.write_text(
        yaml.safe_dump({k: v for k, v in config.items() if v is not None}), encoding="utf-8"
    )
    before = {v.version for v in registry.versions(production.name)}
    arguments = ["train", str(data_path), "--config", str(config_path), "--home", str(registry.home)]
    record = read_export_record(production) if export else None
    if record is not None:
        # A service on the ONNX backend would otherwise export the candidate itself when it is
        # promoted: 20+ s of a swap spent on a serving machine (and its parity check) instead of
        # here; one on `onnx-int8` would quantise it there too, importing torch into a lean worker.
        arguments.append("--quantize" if "int8" in record else "--export-onnx")
    run_refit(arguments, timeout_s, workdir / "retrain.log")
    new = [v.version for v in registry.versions(production.name) if v.version not in before]
    if not new:
        raise RuntimeError("retraining finished but registered no version")
    return new[-1]


def run_refit(arguments: list[str], timeout_s: float, log_path: Path) -> None:
    """Run one `refit` command in a child process with a time limit.

    Its output goes to ``log_path`` and, line by line as it comes, to this module's log: a
    retrain started by the monitor shows its progress (embedding, epochs, export) in the
    monitor's own log.

    Raises:
        RuntimeError: the child failed or ran past ``timeout_s`` (it is killed).
    """
    start = time.perf_counter()
    with log_path.open("wb") as log:
        child = subprocess.Popen(refit_command(*arguments), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        relay = threading.Thread(target=_relay, args=(child, log, arguments[0]), daemon=True)
        relay.start()
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            child.kill()
            child.wait()
            raise RuntimeError(
                f"`refit {arguments[0]}` ran past its {timeout_s:.0f} s limit and was killed"
            ) from exc
        finally:
            relay.join(timeout=5)
    logger.info("`refit %s` finished in %.0f s", arguments[0], time.perf_counter() - start)
    if child.returncode != 0:
        tail = log_path.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"`refit {' '.join(arguments[:2])}` exited with {child.returncode}: {tail}")


def _relay(child: subprocess.Popen[bytes], log: Any, command: str) -> None:
    """Copy the child's output to its log file, and each non-empty line to the monitor's log."""
    assert child.stdout is not None
    for raw in child.stdout:
        log.write(raw)
        log.flush()
        line = raw.decode(errors="replace").strip()
        if line:
            logger.info("refit %s: %s", command, line)
