"""The monitor's Prometheus gauges, in a registry of its own (served by `refit monitor`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class MonitorMetrics:
    """Drift, accuracy, retrain and version metrics of one monitor process."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.drift_detected = Gauge(
            "refit_drift_detected", "1 when the last check found drift.", ["model"], registry=r
        )
        self.drift_share = Gauge(
            "refit_drift_share", "Share of features that drifted in the last check.", ["model"], registry=r
        )
        self.feature_score = Gauge(
            "refit_drift_feature_score",
            "p-value of each feature's two-sample test.",
            ["model", "feature"],
            registry=r,
        )
        self.window_size = Gauge(
            "refit_drift_window_size", "Predictions in the last check's window.", ["model"], registry=r
        )
        self.last_check = Gauge(
            "refit_drift_last_check_timestamp_seconds", "Unix time of the last check.", ["model"], registry=r
        )
        self.checks = Counter(
            "refit_drift_checks",
            "Checks by status (ok, drift, insufficient_data, skipped).",
            ["model", "status"],
            registry=r,
        )
        self.estimated_accuracy = Gauge(
            "refit_estimated_accuracy",
            "Label-free accuracy estimate of the last window (CBPE).",
            ["model"],
            registry=r,
        )
        self.observed_accuracy = Gauge(
            "refit_observed_accuracy", "Accuracy on the last window's feedback labels.", ["model"], registry=r
        )
        self.estimate_trusted = Gauge(
            "refit_estimate_trusted",
            "1 when the last window looks like the reference, so the CBPE estimate can be trusted.",
            ["model"],
            registry=r,
        )
        self.novelty_share = Gauge(
            "refit_window_novelty_share",
            "Share of the last window farther from every reference input than 99% of reference inputs.",
            ["model"],
            registry=r,
        )
        self.check_seconds = Gauge(
            "refit_drift_check_duration_seconds",
            "Duration of the last check: window, embeddings, features, tests, report.",
            ["model"],
            registry=r,
        )
        self.retrain_running = Gauge(
            "refit_retrain_running", "1 while a retrain (candidate, gate, refit) runs.", ["model"], registry=r
        )
        self.retrains = Counter(
            "refit_retrain_runs", "Retrains by outcome.", ["model", "outcome"], registry=r
        )
        self.quarantined = Gauge(
            "refit_feedback_quarantined_rows",
            "Feedback rows the last retrain left out: screened as poisoned, or quarantined by an operator.",
            ["model"],
            registry=r,
        )
        self.production = Gauge(
            "refit_production_version_info",
            "1 for the version being monitored: the one answering (production unless it cannot load).",
            ["model", "version"],
            registry=r,
        )

    def initialise(self, model: str) -> None:
        """Create the counter series of ``model`` at zero, so rates and alerts see 0, not nothing."""
        for status in ("ok", "drift", "insufficient_data", "skipped"):
            self.checks.labels(model, status)
        for outcome in ("promoted", "rejected", "reported", "failed", "skipped"):
            self.retrains.labels(model, outcome)
        self.retrain_running.labels(model).set(0)
        self.quarantined.labels(model).set(0)
