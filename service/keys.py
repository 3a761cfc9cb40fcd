"""API keys: bearer tokens with scopes, stored as SHA-256 digests in one JSON file.

A key is shown once, when it is created; the file holds its name, scopes, optional rate limit
and digest, never the token. Tokens are 256 random bits, so a plain SHA-256 is as hard to reverse
as the token is to guess (no salt or slow hash needed), and comparing digests with
``hmac.compare_digest`` leaks nothing about how much of a guess was right. The service reads the
file again when it changes: a key created or revoked takes effect within a second, no restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from training.errors import ConfigError

SCOPES = ("predict", "feedback", "pin", "admin")  # admin holds every other scope
TOKEN_PREFIX = "refit_"
ANONYMOUS = "anonymous"  # the source of feedback sent while no key existed: no key may be named so


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: who it is for, what it may do, its rate limit, the token's digest."""

    name: str
    scopes: tuple[str, ...]
    sha256: str
    created: str = ""
    rate_per_s: float | None = None  # requests per second; None: unlimited

    def allows(self, scope: str) -> bool:
        """Whether this key may use routes that need ``scope``."""
        return scope in self.scopes or "admin" in self.scopes


def digest(token: str) -> str:
    """The SHA-256 hex digest a token is stored as."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_keys(path: Path) -> list[ApiKey]:
    """The keys in ``path`` (none when the file does not exist).

    Raises:
        ConfigError: the file is not a keys file.
    """
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["keys"]
        return [ApiKey(**{**entry, "scopes": tuple(entry["scopes"])}) for entry in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not a Refit API keys file (expected {{'keys': [...]}} as `refit keys create` "
            f"writes it): {exc}"
        ) from None


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Replace ``path`` atomically with ``keys``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".api-keys.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"keys": [asdict(key) for key in keys]}, out, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def create_key(path: Path, name: str, scopes: list[str], rate_per_s: float | None = None) -> str:
    """Add a key named ``name`` with ``scopes`` to ``path``; returns its token (shown only now).

    Raises:
        ConfigError: an unknown scope, no scope, or a name already in use or reserved.
    """
    if not name.strip() or name == ANONYMOUS:
        raise ConfigError(f"Expected a key name other than '' and {ANONYMOUS!r} (reserved); found {name!r}.")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ConfigError(f"Expected scopes among {', '.join(SCOPES)}; found {unknown or 'none'}.")
    keys = read_keys(path)
    if any(key.name == name for key in keys):
        raise ConfigError(f"A key named {name!r} exists in {path}; revoke it first or choose another name.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    keys.append(ApiKey(name, tuple(dict.fromkeys(scopes)), digest(token), created, rate_per_s))
    write_keys(path, keys)
    return token


def revoke_key(path: Path, name: str) -> None:
    """Remove the key named ``name`` from ``path``.

    Raises:
        ConfigError: there is no such key.
    """
    keys = read_keys(path)
    kept = [key for key in keys if key.name != name]
    if len(kept) == len(keys):
        known = ", ".join(key.name for key in keys) or "none"
        raise ConfigError(f"No key named {name!r} in {path}; keys: {known}.")
    write_keys(path, kept)


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class KeyRing:
    """The keys of one file as the service checks them: re-read when the file changes."""

    def __init__(self, path: Path, reload_every_s: float = 1.0) -> None:
        self.path = path
        self.reload_every_s = reload_every_s
        self._keys: list[ApiKey] = []
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._reload()

    @property
    def enabled(self) -> bool:
        """Whether any key exists: without one, the service is open (loopback only by default)."""
        self._reload_if_due()
        return bool(self._keys)

    def authenticate(self, authorization: str) -> ApiKey | None:
        """The key an ``Authorization`` header value carries (``Bearer <token>``), or None."""
        self._reload_if_due()
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = digest(token.strip())
        found = None
        for key in self._keys:  # every key is compared: the time taken says nothing of which
            if hmac.compare_digest(presented, key.sha256):
                found = key
        return found

    def retry_after(self, key: ApiKey) -> float:
        """0 when ``key`` may make a request now (and it is counted), else seconds to wait."""
        if key.rate_per_s is None:
            return 0.0
        burst = max(1.0, key.rate_per_s)
        with self._lock:
            bucket = self._buckets.setdefault(key.name, _Bucket(burst))
            now = time.monotonic()
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * key.rate_per_s)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / key.rate_per_s

    def _reload_if_due(self) -> None:
        now = time.monotonic()
        if now - self._checked >= self.reload_every_s:
            self._checked = now
            self._reload()

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            stamp: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._keys = read_keys(self.path) if stamp is not None else []
            self._stamp = stamp
