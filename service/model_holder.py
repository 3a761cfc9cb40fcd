"""Which loaded version answers a request: production (hot-swapped) and pinned versions (LRU).

A watcher thread reads the registry's stages every ``poll_s`` seconds. When production changes,
the new version is loaded and warmed in that thread while the old one keeps serving, then one
attribute assignment swaps it in: a batch already running keeps its reference to the old model
and finishes on it. A version that fails to load is counted, logged and not retried until the
stages change again; the old version keeps serving. One poll after a model is let go (swapped out
or evicted from the pinned LRU), when the batches that held it are done, ``on_settled`` runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from training.errors import ModelLoadError, PinNotAllowedError, RefitError, VersionLoadingError
from training.registry import ModelRegistry, ModelVersion

if TYPE_CHECKING:
    from service.predictor import LoadedModel

logger = logging.getLogger(__name__)

Loader = Callable[[ModelVersion], "LoadedModel"]


class ModelHolder:
    """Holds the production model of one registry name and the pinned versions in use."""

    def __init__(
        self,
        registry: ModelRegistry,
        name: str,
        load: Loader,
        *,
        load_pinned: Loader | None = None,
        poll_s: float = 1.0,
        pinned_cache_size: int = 2,
        pinned_load_wait_s: float = 5.0,
        on_swap: Callable[[LoadedModel | None, LoadedModel], None] = lambda old, new: None,
        on_swap_failure: Callable[[str, Exception], None] = lambda version, exc: None,
        on_settled: Callable[[], None] = lambda: None,
        on_degraded: Callable[[str | None], None] = lambda reason: None,
    ) -> None:
        self.registry = registry
        self.name = name
        self._load = load
        self._load_pinned = load_pinned or load
        self.poll_s = poll_s
        self.pinned_cache_size = pinned_cache_size
        self.pinned_load_wait_s = pinned_load_wait_s
        self._loading: dict[str, _PinnedLoad] = {}  # version -> its background load
        self._on_swap = on_swap
        self._on_swap_failure = on_swap_failure
        self._on_settled = on_settled
        self._on_degraded = on_degraded
        self.degraded: str | None = None  # why the model serving is not production, when it is not
        self._settle_due = False
        self._current: LoadedModel | None = None
        self._pinned: OrderedDict[str, LoadedModel] = OrderedDict()
        self._pin_lock = threading.Lock()
        self._failed_version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> LoadedModel:
        """The production model now serving."""
        if self._current is None:
            raise ModelLoadError(f"No version of {self.name!r} is loaded yet")
        return self._current

    @property
    def ready(self) -> bool:
        """True once a production version is loaded and warmed up."""
        return self._current is not None

    def load_production(self) -> LoadedModel:
        """Load the production version now (start-up), blocking until it is warm.

        Raises:
            VersionNotFoundError: the model has no production version.
            ModelLoadError: its files cannot be loaded.
        """
        version = self.registry.get(f"{self.name}:production")
        try:
            self._install(self._load(version))
        except (RefitError, OSError) as exc:
            fallback = self._load_earlier_production(version, exc)
            self._failed_version = version.version
            self._install(fallback)
            self._set_degraded(
                f"production {version.tag} cannot be loaded ({str(exc)[:200]}); serving "
                f"{fallback.version.tag}, an earlier production version"
            )
        return self.current

    def _load_earlier_production(self, production: ModelVersion, error: Exception) -> LoadedModel:
        """The newest earlier production version that loads; ``error`` again when none does.

        A worker that cannot load production then serves what served before it instead of
        failing its start-up again and again.
        """
        stack = self.registry.read_stages(self.name).stack
        for version in reversed(dict.fromkeys(v for v in stack if v != production.version)):
            try:
                return self._load(self.registry.get(f"{self.name}:{version}"))
            except (RefitError, OSError) as exc:
                logger.error("earlier production %s:%s cannot be loaded either: %s", self.name, version, exc)
        raise error

    def _set_degraded(self, reason: str | None) -> None:
        if reason != self.degraded:
            (logger.error if reason else logger.info)(
                "%s: %s", self.name, reason or "serving production again"
            )
        self.degraded = reason
        self._on_degraded(reason)

    def _install(self, loaded: LoadedModel) -> None:
        old, self._current = self._current, loaded
        self._on_swap(old, loaded)
        if old is not None:  # set, never cleared here: a pinned eviction may be waiting too
            self._settle_due = True

    def production_version(self) -> str | None:
        """The version the registry names as production now."""
        return self.registry.read_stages(self.name).production

    def check_for_promotion(self) -> bool:
        """Swap to the registry's production version if it changed; True when a swap happened."""
        wanted = self.production_version()
        current = self._current.version.version if self._current else None
        if wanted is not None and wanted == current and self.degraded:
            self._set_degraded(None)  # production came back to what this worker serves (a rollback)
        if wanted is None or wanted == current or wanted == self._failed_version:
            return False
        try:
            loaded = self._load(self.registry.get(f"{self.name}:{wanted}"))
        except (RefitError, OSError) as exc:
            self._failed_version = wanted
            logger.error("cannot swap to %s:%s, keeping %s: %s", self.name, wanted, current, exc)
            self._on_swap_failure(wanted, exc)
            self._set_degraded(
                f"production {self.name}:{wanted} cannot be loaded ({str(exc)[:200]}); serving "
                f"{self.name}:{current}, the version that served before"
            )
            return False
        self._failed_version = None
        self._install(loaded)
        if self.degraded:
            self._set_degraded(None)
        logger.info("swapped %s from %s to %s", self.name, current, wanted)
        return True

    def get(self, pin: str | None = None) -> LoadedModel:
        """The model for a request: production, or the version pinned by ``X-Model-Version``.

        A pinned version not loaded yet loads in the background (a version without an ONNX export
        is exported first, which takes seconds); the request waits up to ``pinned_load_wait_s``.

        Raises:
            VersionNotFoundError: the pinned version is not registered.
            PinNotAllowedError: it is archived (a rejected candidate, an old production) and no
                admin allowed it with `refit models allow-pin`.
            VersionLoadingError: it is still loading; ask again after ``retry_after_s``.
            ModelLoadError: it cannot be loaded.
        """
        current = self.current
        if not pin or pin == current.version.version:
            return current
        with self._pin_lock:
            if pin in self._pinned:
                self._pinned.move_to_end(pin)
                return self._pinned[pin]
            version = self.registry.get(f"{self.name}:{pin}")  # a version id or a stage name
            if version.version == current.version.version:
                return current
            if not self.registry.read_stages(self.name).may_pin(version.version):
                raise PinNotAllowedError(
                    f"Version {version.tag} is {version.stage}: requests may pin production, candidate "
                    f"versions, or a version an admin allowed with `refit models allow-pin {version.tag}`."
                )
            if version.version in self._pinned:
                self._pinned.move_to_end(version.version)
                return self._pinned[version.version]
            load = self._loading.get(version.version)
            if load is None:
                load = _PinnedLoad(version, self._load_pinned, self._keep_pinned)
                self._loading[version.version] = load
        return load.wait(self.pinned_load_wait_s)

    def _keep_pinned(self, load: _PinnedLoad) -> None:
        """A background load ended: keep its model in the LRU (or its error for the waiters)."""
        with self._pin_lock:
            self._loading.pop(load.version.version, None)
            if load.model is None:
                return
            self._pinned[load.version.version] = load.model
            while len(self._pinned) > self.pinned_cache_size:
                evicted, _ = self._pinned.popitem(last=False)
                self._settle_due = True
                logger.info("unloaded pinned version %s:%s (LRU)", self.name, evicted)

    def settle(self) -> bool:
        """Run ``on_settled`` if a model was let go since the last call; True when it ran."""
        if not self._settle_due:
            return False
        self._settle_due = False
        self._on_settled()
        return True

    def start_watching(self) -> None:
        """Start the thread that follows promotions."""
        self._thread = threading.Thread(target=self._watch, name="refit-model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following promotions."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.settle()
                self.check_for_promotion()
            except Exception:  # the watcher must outlive a bad stages read; log and poll again
                logger.exception("checking %s for a promotion failed", self.name)


class _PinnedLoad:
    """One pinned version loading in a thread of its own; requests wait on it, with a limit."""

    def __init__(self, version: ModelVersion, load: Loader, on_done: Callable[[_PinnedLoad], None]) -> None:
        self.version = version
        self.model: LoadedModel | None = None
        self.error: Exception | None = None
        self.started = time.monotonic()
        self._done = threading.Event()
        self._load, self._on_done = load, on_done
        logger.info("loading pinned version %s in the background", version.tag)
        threading.Thread(target=self._run, name=f"refit-load-{version.version}", daemon=True).start()

    def _run(self) -> None:
        try:
            self.model = self._load(self.version)
            logger.info(
                "pinned version %s loaded in %.1f s", self.version.tag, time.monotonic() - self.started
            )
        except Exception as exc:  # handed to every waiting request
            self.error = exc
            logger.error("pinned version %s cannot be loaded: %s", self.version.tag, exc)
        finally:
            self._on_done(self)
            self._done.set()

    def wait(self, timeout_s: float) -> LoadedModel:
        """The loaded model, once ready within ``timeout_s``.

        Raises:
            VersionLoadingError: not ready yet.
            ModelLoadError: the load failed.
        """
        if not self._done.wait(timeout_s):
            elapsed = time.monotonic() - self.started
            raise VersionLoadingError(
                f"Version {self.version.tag} is loading ({elapsed:.0f} s so far; a version without an "
                "ONNX export is exported first, with its parity check). Retry shortly.",
                retry_after_s=max(1, round(min(elapsed, 10.0))),
            )
        if self.model is None:
            if isinstance(self.error, ModelLoadError):
                raise self.error
            raise ModelLoadError(f"Version {self.version.tag} cannot be loaded: {self.error}")
        return self.model
