"""A content-addressed store of files (images): ``<root>/<first two hex digits>/<sha256 hex>``.

A version's image splits name images by content hash, so retraining and the promotion gate read
exactly the bytes the version was trained on, and versions that share images store them once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from training.registry import default_home

PREFIX = "sha256:"


def hash_bytes(data: bytes) -> str:
    """The content key of ``data``: ``sha256:<hex>``."""
    return PREFIX + hashlib.sha256(data).hexdigest()


class BlobStore:
    """Files keyed by the sha256 of their bytes; writes are atomic and idempotent."""

    def __init__(self, root: Path) -> None:
        # Absolute: its paths go into files that other processes read from other folders (a
        # retrain's CSV, whose relative paths are read from the CSV's own folder).
        self.root = Path(root).absolute()

    def path(self, key: str) -> Path:
        """Where the blob with ``key`` lives (whether or not it exists)."""
        digest = key.removeprefix(PREFIX)
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"Not a blob key: {key!r}; expected 'sha256:' and 64 hex digits")
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its key."""
        key = hash_bytes(data)
        target = self.path(key)
        if target.is_file():
            return key
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".blob.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return key

    def read(self, key: str) -> bytes:
        """The bytes stored under ``key``.

        Raises:
            FileNotFoundError: no blob with that key.
        """
        return self.path(key).read_bytes()

    def prune(self, max_bytes: int, older_than_s: float | None = None, keep: Iterable[str] = ()) -> int:
        """Delete blobs older than ``older_than_s`` seconds, then the oldest until the store holds at
        most ``max_bytes``; never a key of ``keep``. Returns how many were deleted."""
        kept = {key.removeprefix(PREFIX) for key in keep}
        entries = []
        for path in self.root.glob("??/*"):
            if path.name.startswith(".") or path.name in kept:
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        cutoff = time.time() - older_than_s if older_than_s is not None else None
        removed = 0
        for mtime, size, path in sorted(entries):
            if total <= max_bytes and (cutoff is None or mtime >= cutoff):
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed


def registry_images(home: Path | None = None) -> BlobStore:
    """The registry's image store, beside the model store: ``$BENTOML_HOME/refit/images``."""
    return BlobStore((home or default_home()) / "refit" / "images")
