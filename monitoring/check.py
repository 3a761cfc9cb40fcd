"""One drift check of the production version: window, features, report, accuracy estimates.

The shell around the pure `detect_drift`: it reads the window from the inference log, builds
features with the version's reference, saves the HTML report and the Evidently snapshot, and
records the check in the history table.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from monitoring.drift import DriftResult, build_snapshot, detect_drift
from monitoring.history import read_feedback, read_serving_version, read_window, record_check
from monitoring.reference import Reference, assess_estimate, load_reference
from monitoring.report import ReportContext, render_report, shown_columns
from monitoring.retention import prune_reports
from monitoring.settings import MonitorSettings
from training.artifacts import version_modality
from training.blobs import BlobStore
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
    reason: str = ""  # why a check was skipped
    novelty_share: float | None = None  # share of the window unlike every reference text
    estimate_trusted: bool | None = None  # None: no estimate
    estimate_note: str = ""  # why the estimate can or cannot be trusted on this window
    seconds: float = 0.0  # the whole check: window, embeddings, features, tests, report
    production: str | None = None  # the registry's production version (may differ from ``version``)
    baseline: pd.DataFrame | None = None  # the reference features the window was tested against
    current: pd.DataFrame | None = None  # the window's features

    @functools.cached_property
    def snapshot(self) -> Any:
        """The check as an Evidently snapshot, built on first use (about a second at 1,000 rows,
        most of it Evidently drawing its widgets); None when no window was tested."""
        if self.baseline is None or self.current is None:
            return None
        return build_snapshot(self.baseline, self.current, self.result)


class DriftChecker:
    """Runs checks of one model's production version; caches each version's reference."""

    def __init__(
        self, settings: MonitorSettings, engine: Engine, registry: ModelRegistry | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry or ModelRegistry(settings.home)
        self._reference: Reference | None = None

    def _inputs(self, reference: Reference, window: pd.DataFrame) -> list[Any]:
        """What the version's model reads for each window row: the text, or the logged image file."""
        if version_modality(reference.version) == "image":
            store = BlobStore(self.settings.image_store_path)
            return [store.path(key) for key in window["text"]]
        return list(window["text"])

    def reference(self, version: str) -> Reference:
        """The reference of ``version``, built once.

        Raises:
            ModelLoadError: its profile or model is missing or corrupt.
        """
        if self._reference is None or self._reference.version.version != version:
            loaded = self.registry.get(f"{self.settings.model}:{version}")
            self._reference = load_reference(
                loaded,
                self.settings.pca_components,
                self.settings.reference_rows,
                cache_dir=self.settings.home / "refit" / "cache",
            )
        return self._reference

    def check(self, minutes: float | None = None, report: Path | None = None) -> CheckOutcome:
        """Check the latest window of the version serving now (see :func:`read_serving_version`).

        That is production unless the service could not load it and answers with an earlier one;
        before anything is logged, production.

        Raises:
            VersionNotFoundError: the model has no production version.
            ModelLoadError: the reference profile is missing or corrupt.
        """
        start = time.perf_counter()
        production = self.registry.get(f"{self.settings.model}:production").version
        version = read_serving_version(self.engine, self.settings.model) or production
        if version != production:
            logger.warning(
                "%s: production is %s but the log shows %s answering; checking %s",
                self.settings.model, production, version, version,
            )  # fmt: skip
        reference = self.reference(version)
        window = read_window(
            self.engine,
            self.settings.model,
            version,
            self.settings.window_size,
            minutes or self.settings.window_minutes,
        )
        if version_modality(reference.version) == "image":
            # The same image bytes again (a retry, a re-inspection) are one observation: counted
            # twice, they make the two-sample tests over-confident (drift_power_images measured
            # 12% false alarms at windows of 200 resampled from 267 tiles).
            window = window.drop_duplicates("text", keep="last").reset_index(drop=True)
        if len(window) < self.settings.min_window:
            result = detect_drift(reference.features, window, min_window=self.settings.min_window)
            outcome = CheckOutcome(result, version, None, None, 0, None, production=production)
            return self._finish(outcome, start)
        probabilities = np.asarray(window["probabilities"].tolist(), dtype=np.float32)
        current, distances = reference.live_features(window, self._inputs(reference, window), probabilities)
        current["estimated_correct"] = reference.estimate_correct(current["confidence"])
        current["observed_correct"] = self._observed(window)
        baseline = reference.features.assign(
            estimated_correct=reference.estimate_correct(reference.features["confidence"])
        )
        result = detect_drift(
            baseline, current, alpha=self.settings.alpha, min_window=self.settings.min_window
        )
        labelled = int(current["observed_correct"].notna().sum())
        trusted, share, note = assess_estimate(distances, reference.novelty_threshold, self.settings.alpha)
        outcome = CheckOutcome(
            result=result,
            version=version,
            estimated_accuracy=float(current["estimated_correct"].mean()),
            observed_accuracy=float(current["observed_correct"].mean()) if labelled else None,
            labelled=labelled,
            report=report or self._report_path(),
            novelty_share=share,
            estimate_trusted=trusted,
            estimate_note=note,
            production=production,
            baseline=baseline,
            current=current,
        )
        self._write_report(outcome, baseline, current, start, self._thumbnails(reference, result, window))
        return self._finish(outcome, start)

    def _thumbnails(
        self, reference: Reference, result: DriftResult, window: pd.DataFrame
    ) -> dict[str, dict[str, list[str]]]:
        """For an image version, images at the extremes of the drifted descriptors."""
        drifted = [c.column for c in result.columns if c.drifted]
        if version_modality(reference.version) != "image" or not drifted:
            return {}
        from monitoring.thumbnails import extreme_thumbnails
        from training.artifacts import load_version_profile, version_images

        stores = (version_images(reference.version), BlobStore(self.settings.image_store_path))
        return extreme_thumbnails(drifted, load_version_profile(reference.version), window, stores)

    def _write_report(
        self,
        outcome: CheckOutcome,
        baseline: pd.DataFrame,
        current: pd.DataFrame,
        start: float,
        thumbnails: dict[str, dict[str, list[str]]],
    ) -> None:
        """The check's HTML report (Evidently's own beside it when asked for), then retention."""
        assert outcome.report is not None and outcome.version is not None
        context = ReportContext(
            model=self.settings.model,
            version=outcome.version,
            estimated_accuracy=outcome.estimated_accuracy,
            observed_accuracy=outcome.observed_accuracy,
            labelled=outcome.labelled,
            estimate_note=outcome.estimate_note,
            seconds=time.perf_counter() - start,
            thumbnails=thumbnails,
        )
        outcome.report.parent.mkdir(parents=True, exist_ok=True)
        page = render_report(outcome.result, baseline, current, context)
        outcome.report.write_text(page, encoding="utf-8")
        if self.settings.evidently_html and outcome.snapshot is not None:
            outcome.snapshot.save_html(str(outcome.report.with_suffix(".evidently.html")))
        prune_reports(
            self.settings.reports_path,
            f"{self.settings.model}-drift-",
            self.settings.keep_checks,
            self.settings.keep_checks_days,
        )

    def _observed(self, window: pd.DataFrame) -> pd.Series:
        """1.0/0.0 where a window prediction has a feedback label, NaN elsewhere."""
        labels = read_feedback(self.engine, self.settings.model)
        by_request = labels.dropna(subset=["request_id"]).drop_duplicates("request_id", keep="last")
        truth = window["request_id"].map(by_request.set_index("request_id")["label"])
        return (truth == window["label"]).astype(float).where(truth.notna())

    def _report_path(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return self.settings.reports_path / f"{self.settings.model}-drift-{stamp}.html"

    def _finish(self, outcome: CheckOutcome, start: float) -> CheckOutcome:
        outcome.seconds = round(time.perf_counter() - start, 3)
        result = outcome.result
        listed = shown_columns(result.columns)
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
                "detail": {
                    # What the report lists: a row per class probability would make every check's
                    # row several times larger for tests that found nothing.
                    "columns": [c.__dict__ for c in listed],
                    "class_probability_tests_not_listed": len(result.columns) - len(listed),
                    "reason": outcome.reason,
                    "novelty_share": outcome.novelty_share,
                    "estimate_trusted": outcome.estimate_trusted,
                    "estimate_note": outcome.estimate_note,
                    "seconds": outcome.seconds,
                    "test_seconds": result.seconds,
                },
            },
        )
        logger.info(
            "check of %s:%s: %s (share %.2f, window %d, %.1f s)",
            self.settings.model,
            outcome.version,
            result.status,
            result.share,
            result.window_size,
            outcome.seconds,
        )
        return outcome
