"""One drift check of the production version: window, features, report, accuracy estimates.

The shell around the pure `detect_drift`: it reads the window from the inference log, builds
features with the version's reference, saves the HTML report and the Evidently snapshot, and
records the check in the history table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from monitoring.drift import DriftResult, detect_drift
from monitoring.reference import Reference, load_reference
from monitoring.settings import MonitorSettings
from monitoring.store import read_feedback, read_window, record_check
from training.registry import ModelRegistry

logger = logging.getLogger(__name__)


@dataclass
class CheckOutcome:
    """A check's result with what the dashboards show beside it."""

    result: DriftResult
    version: str | None
    estimated_accuracy: float | None
    observed_accuracy: float | None
    labelled: int  # window rows with a feedback label
    report: Path | None
    snapshot: Any = None
    reason: str = ""  # why a check was skipped


class DriftChecker:
    """Runs checks of one model's production version; caches each version's reference."""

    def __init__(
        self, settings: MonitorSettings, engine: Engine, registry: ModelRegistry | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry or ModelRegistry(settings.home)
        self._reference: Reference | None = None

    def reference(self, version: str) -> Reference:
        """The reference of ``version``, built once.

        Raises:
            ModelLoadError: its profile or model is missing or corrupt.
        """
        if self._reference is None or self._reference.version.version != version:
            loaded = self.registry.get(f"{self.settings.model}:{version}")
            self._reference = load_reference(
                loaded, self.settings.pca_components, self.settings.reference_rows
            )
        return self._reference

    def check(self, minutes: float | None = None, report: Path | None = None) -> CheckOutcome:
        """Check the latest window of the production version now.

        Raises:
            VersionNotFoundError: the model has no production version.
            ModelLoadError: the reference profile is missing or corrupt.
        """
        version = self.registry.get(f"{self.settings.model}:production").version
        reference = self.reference(version)
        window = read_window(
            self.engine,
            self.settings.model,
            version,
            self.settings.window_size,
            minutes or self.settings.window_minutes,
        )
        if len(window) < self.settings.min_window:
            result, _ = detect_drift(reference.features, window, min_window=self.settings.min_window)
            return self._finish(CheckOutcome(result, version, None, None, 0, None))
        probabilities = np.asarray(window["probabilities"].tolist(), dtype=np.float32)
        current = reference.live_features(list(window["text"]), probabilities)
        current["estimated_correct"] = np.interp(current["confidence"], *reference.calibration)
        current["observed_correct"] = self._observed(window)
        baseline = reference.features.assign(
            estimated_correct=np.interp(reference.features["confidence"], *reference.calibration)
        )
        path = report or self._report_path()
        result, snapshot = detect_drift(
            baseline,
            current,
            alpha=self.settings.alpha,
            min_window=self.settings.min_window,
            report_path=path,
        )
        labelled = int(current["observed_correct"].notna().sum())
        outcome = CheckOutcome(
            result=result,
            version=version,
            estimated_accuracy=float(current["estimated_correct"].mean()),
            observed_accuracy=float(current["observed_correct"].mean()) if labelled else None,
            labelled=labelled,
            report=path,
            snapshot=snapshot,
        )
        return self._finish(outcome)

    def _observed(self, window: pd.DataFrame) -> pd.Series:
        """1.0/0.0 where a window prediction has a feedback label, NaN elsewhere."""
        labels = read_feedback(self.engine, self.settings.model)
        by_request = labels.dropna(subset=["request_id"]).drop_duplicates("request_id", keep="last")
        truth = window["request_id"].map(by_request.set_index("request_id")["label"])
        return (truth == window["label"]).astype(float).where(truth.notna())

    def _report_path(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return self.settings.reports_path / f"{self.settings.model}-drift-{stamp}.html"

    def _finish(self, outcome: CheckOutcome) -> CheckOutcome:
        result = outcome.result
        record_check(
            self.engine,
            {
                "checked_at": datetime.fromisoformat(result.checked_at),
                "model": self.settings.model,
                "version": outcome.version,
                "status": result.status,
                "drifted": result.drifted,
                "share": result.share,
                "window_size": result.window_size,
                "estimated_accuracy": outcome.estimated_accuracy,
                "observed_accuracy": outcome.observed_accuracy,
                "report": str(outcome.report) if outcome.report else None,
                "detail": {"columns": [c.__dict__ for c in result.columns], "reason": outcome.reason},
            },
        )
        logger.info(
            "check of %s:%s: %s (share %.2f, window %d)",
            self.settings.model,
            outcome.version,
            result.status,
            result.share,
            result.window_size,
        )
        return outcome
