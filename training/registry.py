"""Versioned models in the BentoML model store, with stages `production`, `candidate`, `archived`.

BentoML stores each version immutably under ``$BENTOML_HOME/models/<name>/<version>``. Stages
change over time, so they live beside the store in ``$BENTOML_HOME/refit/stages/<name>.json``:
the production version, a stack of earlier production versions (for rollback), the archived
set and an audit trail. Every change takes an exclusive file lock and replaces the file with
``os.replace``, so readers (the service, the monitor) never see a half-written state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from training.errors import RegistryError, VersionNotFoundError
from training.usage_tracking import turn_off_usage_tracking

logger = logging.getLogger(__name__)

STAGES = ("production", "candidate", "archived")
MANIFEST = "refit.json"


def default_home() -> Path:
    """BentoML's home: ``$BENTOML_HOME`` or ``~/bentoml``."""
    return Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))


class StageEvent(BaseModel):
    """One change of a model's stages, for the audit trail."""

    at: str  # ISO 8601, UTC
    action: str  # promote, rollback, delete, add_feedback_labels
    version: str
    previous: str | None = None
    reason: str = ""


class Stages(BaseModel):
    """A model's stage state, as stored in ``refit/stages/<name>.json``."""

    production: str | None = None
    stack: list[str] = Field(default_factory=list)  # production versions, oldest first (rollback)
    archived: list[str] = Field(default_factory=list)
    events: list[StageEvent] = Field(default_factory=list)
    # Labels not in the model that feedback may carry already (new intents on their way in).
    feedback_labels: list[str] = Field(default_factory=list)
    # Versions an admin allowed to be pinned (X-Model-Version) beside production and candidates.
    pinnable: list[str] = Field(default_factory=list)

    def may_pin(self, version: str) -> bool:
        """Whether a request may pin ``version``: production, a candidate, or allowed by an admin."""
        return self.stage_of(version) in ("production", "candidate") or version in self.pinnable

    def stage_of(self, version: str) -> str:
        """``production``, ``archived`` or ``candidate``."""
        if version == self.production:
            return "production"
        return "archived" if version in self.archived else "candidate"

    def record(self, action: str, version: str, previous: str | None = None, reason: str = "") -> None:
        """Add an event to the audit trail."""
        at = datetime.now(UTC).isoformat()
        self.events.append(
            StageEvent(at=at, action=action, version=version, previous=previous, reason=reason)
        )


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: where its files are, what it is, and its stage."""

    name: str
    version: str
    path: Path
    stage: str
    created: str
    manifest: dict[str, Any]

    @property
    def tag(self) -> str:
        """``name:version``, the reference that always means this version."""
        return f"{self.name}:{self.version}"


class ModelRegistry:
    """Register, list, load, promote, roll back and delete model versions."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home else default_home()
        self._store: Any = None

    @property
    def store(self) -> Any:
        """The BentoML model store under this registry's home."""
        if self._store is None:
            from bentoml._internal.models.model import ModelStore

            (self.home / "models").mkdir(parents=True, exist_ok=True)
            self._store = ModelStore(self.home / "models")
        return self._store

    def _stage_file(self, name: str) -> Path:
        return self.home / "refit" / "stages" / f"{name}.json"

    def register(
        self, name: str, metadata: dict[str, Any], write: Callable[[Path], dict[str, Any]]
    ) -> ModelVersion:
        """Create a new version: ``write(dir)`` fills the directory and returns its manifest.

        The version starts as a `candidate`; the first version of a model becomes `production`.
        """
        import bentoml

        turn_off_usage_tracking()  # before BentoML's first save reads the variable (it caches it)
        labels = {"refit": "classifier", "strategy": str(metadata.get("strategy", ""))}
        shown = {k: v for k, v in metadata.items() if v is not None}  # BentoML rejects None
        with bentoml.models.create(
            name, labels=labels, metadata=shown, module="refit", _model_store=self.store
        ) as bento_model:
            manifest = write(Path(bento_model.path))
            manifest.update(name=name, version=bento_model.tag.version)
            manifest["created"] = bento_model.creation_time.astimezone(UTC).isoformat()
            (Path(bento_model.path) / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        version = str(bento_model.tag.version)
        if self.read_stages(name).production is None:
            self.promote(f"{name}:{version}", reason="first version of the model")
        logger.info("registered %s:%s", name, version)
        return self.get(f"{name}:{version}")

    def names(self) -> list[str]:
        """Names of the models that have at least one version."""
        return sorted({str(m.tag.name) for m in self.store.list() if m.info.module == "refit"})

    def versions(self, name: str) -> list[ModelVersion]:
        """All versions of a model, oldest first."""
        from bentoml.exceptions import NotFound

        try:
            models = self.store.list(name)
        except NotFound:  # a model name the store has never seen
            return []
        stages = self.read_stages(name)
        found = [self._describe(m, stages) for m in models if m.info.module == "refit"]
        return sorted(found, key=lambda v: v.created)

    def _describe(self, bento_model: Any, stages: Stages) -> ModelVersion:
        path = Path(bento_model.path)
        manifest_file = path / MANIFEST
        manifest = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else {}
        version = str(bento_model.tag.version)
        return ModelVersion(
            name=str(bento_model.tag.name),
            version=version,
            path=path,
            stage=stages.stage_of(version),
            created=bento_model.creation_time.astimezone(UTC).isoformat(),
            manifest=manifest,
        )

    def existing_versions(self, name: str) -> list[ModelVersion]:
        """:meth:`versions` of a model that exists.

        Raises:
            VersionNotFoundError: the model has no version; the message lists the models there.
        """
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise VersionNotFoundError(f"No model named {name!r} in {self.home}. Models: {known}.")
        return versions

    def get(self, ref: str) -> ModelVersion:
        """Resolve ``name``, ``name:production``, ``name:candidate``, ``name:latest`` or ``name:version``.

        A bare name means the production version. ``candidate`` is the newest candidate.

        Raises:
            VersionNotFoundError: nothing matches; the message lists what exists.
        """
        name, _, selector = ref.partition(":")
        selector = selector or "production"
        versions = self.existing_versions(name)
        if selector == "latest":
            return versions[-1]
        if selector in STAGES:
            matching = [v for v in versions if v.stage == selector]
            if not matching:
                raise VersionNotFoundError(
                    f"Model {name!r} has no {selector} version. Versions: "
                    + ", ".join(f"{v.version} ({v.stage})" for v in versions)
                    + ". Hint: `refit models promote NAME:VERSION`."
                )
            return matching[-1]
        for v in versions:
            if v.version == selector:
                return v
        raise VersionNotFoundError(
            f"Model {name!r} has no version {selector!r}. Expected a version, 'latest' or a stage "
            f"{STAGES}; versions: {', '.join(v.version for v in versions)}."
        )

    def read_stages(self, name: str) -> Stages:
        """The stage state of a model (production, rollback stack, archived, audit events)."""
        path = self._stage_file(name)
        if not path.is_file():
            return Stages()
        return Stages.model_validate_json(path.read_text(encoding="utf-8"))

    @contextlib.contextmanager
    def _locked_stages(self, name: str) -> Iterator[Stages]:
        path = self._stage_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read_stages(name)
            yield state
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(state.model_dump_json(indent=2))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)

    def promote(self, ref: str, reason: str = "") -> ModelVersion:
        """Make a version production; the previous production version is archived."""
        target = self.get(ref)
        with self._locked_stages(target.name) as state:
            previous = state.production
            if previous == target.version:
                return target
            if previous:
                state.archived = sorted(set(state.archived) | {previous})
            state.archived = [v for v in state.archived if v != target.version]
            state.production = target.version
            state.stack.append(target.version)
            state.record("promote", target.version, previous, reason)
        logger.info("promoted %s (was %s)", target.tag, previous)
        return self.get(target.tag)

    def rollback(self, name: str, reason: str = "") -> ModelVersion:
        """Restore the production version that preceded the current one.

        Raises:
            VersionNotFoundError: no such model.
            RegistryError: there is no earlier production version to return to.
        """
        existing = {v.version for v in self.existing_versions(name)}
        with self._locked_stages(name) as state:
            current = state.production
            previous = _earlier_production(name, state, existing)
            last = len(state.stack) - 1 - state.stack[::-1].index(previous)
            state.stack = state.stack[: last + 1]
            state.production = previous
            archived = set(state.archived) | ({current} if current else set())
            state.archived = sorted(archived - {previous})
            state.record("rollback", previous, current, reason)
        logger.info("rolled %s back to %s (was %s)", name, previous, current)
        return self.get(f"{name}:{previous}")

    def rollback_target(self, name: str, deleted: Collection[str] = ()) -> ModelVersion:
        """The version :meth:`rollback` would restore (once the ``deleted`` versions are gone).

        Raises:
            VersionNotFoundError: no such model.
            RegistryError: there is no earlier production version to return to.
        """
        existing = {v.version for v in self.existing_versions(name)} - set(deleted)
        return self.get(f"{name}:{_earlier_production(name, self.read_stages(name), existing)}")

    def archive(self, ref: str, reason: str = "") -> ModelVersion:
        """Archive a version that is not production (a candidate the gate rejected, say).

        Raises:
            RegistryError: the version is production.
        """
        target = self.get(ref)
        if target.stage == "production":
            raise RegistryError(f"Refusing to archive {target.tag}: it is the production version.")
        with self._locked_stages(target.name) as state:
            state.archived = sorted(set(state.archived) | {target.version})
            state.pinnable = [v for v in state.pinnable if v != target.version]
            state.record("archive", target.version, reason=reason)
        return self.get(target.tag)

    def allow_pin(self, ref: str, reason: str = "") -> ModelVersion:
        """Let requests pin this version with X-Model-Version, whatever its stage."""
        target = self.get(ref)
        with self._locked_stages(target.name) as state:
            if target.version not in state.pinnable:
                state.pinnable.append(target.version)
                state.record("allow_pin", target.version, reason=reason)
        return target

    def feedback_labels(self, name: str) -> list[str]:
        """Labels not in the model that feedback may carry already (new intents on their way in)."""
        return list(self.read_stages(name).feedback_labels)

    def add_feedback_labels(self, name: str, labels: list[str]) -> list[str]:
        """Accept feedback with ``labels`` from now on; every replica sees it at its next request.

        This is the first step when a new intent appears: its labelled examples can then be
        collected as feedback and a retrain learns the new class.

        Raises:
            VersionNotFoundError: the model has no version.
        """
        self.get(name)
        with self._locked_stages(name) as state:
            known = list(state.feedback_labels)
            added = [label for label in dict.fromkeys(labels) if label not in known]
            state.feedback_labels = known + added
            if added:
                state.record("add_feedback_labels", ", ".join(added))
        return known + added

    def deletable(self, ref: str) -> ModelVersion:
        """The version ``ref`` names, when it may be deleted.

        Raises:
            RegistryError: the version is production.
        """
        target = self.get(ref)
        if target.stage == "production":
            raise RegistryError(
                f"Refusing to delete {target.tag}: it is the production version. "
                "Promote another version or roll back first."
            )
        return target

    def delete(self, ref: str) -> None:
        """Delete a version that is not in production.

        Raises:
            RegistryError: the version is production.
        """
        target = self.deletable(ref)
        with self._locked_stages(target.name) as state:
            self.store.delete(target.tag)
            state.archived = [v for v in state.archived if v != target.version]
            state.stack = [v for v in state.stack if v != target.version]
            state.record("delete", target.version)


def _earlier_production(name: str, state: Stages, existing: set[str]) -> str:
    """The production version before the current one that still exists.

    Raises:
        RegistryError: there is none.
    """
    earlier = [v for v in state.stack[:-1] if v in existing and v != state.production]
    if not earlier:
        raise RegistryError(
            f"Cannot roll back {name!r}: no earlier production version to restore "
            f"(current: {state.production}). Expected a model promoted at least twice."
        )
    return earlier[-1]
