"""Where a version's ONNX export lives: its files, its record, and the lock that makes processes
starting together export once.

Apart from :mod:`training.onnx_export` because exporting runs torch and finding an export does
not: a service worker running ONNX imports torch only when it has to export first.
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from training.artifacts import ONNX_DIR
from training.registry import ModelVersion

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
QUANTIZED_FILE = "model.int8.onnx"
EXPORT_RECORD = "export.json"


@contextmanager
def export_lock(version: ModelVersion) -> Iterator[None]:
    """Hold the version's export lock: service workers starting together export only once."""
    directory = version.path / ONNX_DIR
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_export_record(version: ModelVersion) -> dict[str, Any] | None:
    """The recorded export of a version, or None if it was never exported."""
    path = version.path / ONNX_DIR / EXPORT_RECORD
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def find_export(version: ModelVersion, int8: bool = False) -> Path | None:
    """The ONNX file that serves ``version``, or None while it has yet to be exported.

    With ``int8``: the int8 model, or the float export where int8 lost too much accuracy to be
    kept (with a warning: accuracy comes before speed); None while it has yet to be quantised.
    """
    target = version.path / ONNX_DIR / ONNX_FILE
    if not int8:
        return target if target.is_file() else None
    with export_lock(version):  # the record is written last: read under the lock, it is whole
        record = read_export_record(version)
    if record is None or "int8" not in record:
        return None
    quantized = version.path / ONNX_DIR / QUANTIZED_FILE
    if record["int8"].get("kept", True) and quantized.is_file():
        return quantized
    logger.warning(
        "%s: int8 was not kept (accuracy %+.4f); serving the float ONNX export",
        version.tag, record["int8"]["accuracy_change"],
    )  # fmt: skip
    return target
