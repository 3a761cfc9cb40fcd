"""The monitor: check, publish (metrics, workspace), decide, and retrain behind the gate."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import Engine

from monitoring.adaptation import adapt
from monitoring.check import CheckOutcome, DriftChecker
from monitoring.drift import ACCURACY_COLUMNS
from monitoring.features import PREDICTION_COLUMNS, is_probability_column
from monitoring.history import (
    ADAPT_TRIGGER,
    create_monitor_tables,
    read_checks,
    read_feedback,
    read_retrains,
    read_window,
    record_retrain,
)
from monitoring.metrics import MonitorMetrics
from monitoring.policy import Decision, decide
from monitoring.retrain import RetrainResult, retrain
from monitoring.screening import sources_of
from monitoring.settings import MonitorSettings
from monitoring.sources import read_quarantined
from monitoring.workspace import record_snapshot
from service.inference_log_db import create_log_engine
from training.errors import ModelLoadError, VersionNotFoundError
from training.registry import ModelRegistry

logger = logging.getLogger(__name__)


# (registry, feedback rows, settings) -> what the retrain did; tests pass a recording one.
Retrainer = Callable[[ModelRegistry, pd.DataFrame, MonitorSettings], RetrainResult]


@dataclass
class MonitorRun:
    """One scheduled (or manual) pass: the check, the decision, the retrain if there was one."""

    check: CheckOutcome | None
    decision: Decision | None
    retrain: RetrainResult | None
    error: str = ""


class Monitor:
    """Everything `refit monitor` does at each interval, for one model."""

    def __init__(
        self,
        settings: MonitorSettings,
        *,
        engine: Engine | None = None,
        registry: ModelRegistry | None = None,
        metrics: MonitorMetrics | None = None,
        retrainer: Retrainer = retrain,
    ) -> None:
        self.settings = settings
        self.engine = engine or create_log_engine(settings.resolved_log_url)
        create_monitor_tables(self.engine)
        self.registry = registry or ModelRegistry(settings.home)
        self.metrics = metrics or MonitorMetrics()
        self.metrics.initialise(settings.model)
        self.checker = DriftChecker(settings, self.engine, self.registry)
        self.retrainer = retrainer
        self._published_version: str | None = None

    def run(self, minutes: float | None = None, act: bool = True) -> MonitorRun:
        """Check now; then, when ``act``, apply the policy (which may retrain)."""
        model = self.settings.model
        try:
            outcome = self.checker.check(minutes=minutes)
        except (ModelLoadError, VersionNotFoundError) as exc:
            logger.error("check of %s skipped: %s", model, exc)
            self.metrics.checks.labels(model, "skipped").inc()
            return MonitorRun(None, None, None, error=str(exc))
        self.publish(outcome)
        if not act or outcome.result.status == "insufficient_data":
            return MonitorRun(outcome, None, None)
        decision = self.decide(outcome.version)
        if decision.action != "none":
            logger.warning("drift alert for %s: %s", model, decision.reason)
        acted = self.act(decision, outcome) if decision.action in ("retrain", "report") else None
        return MonitorRun(outcome, decision, acted)

    def act(self, decision: Decision, outcome: CheckOutcome) -> RetrainResult | None:
        """Retrain on labels when the drifted window holds ``min_feedback`` of them. With fewer,
        and drift in the inputs themselves (descriptors, embeddings), adapt to them without labels
        (unless adaptation is off); in alert mode, only report what adapting would do.

        Only labels of the window's predictions count: labels of the traffic before the drift
        (the image demo's calm phase brought 189) say nothing about the new domain.
        """
        labelled = outcome.labelled
        enough = labelled >= self.settings.min_feedback
        inputs = input_drift(outcome)
        can_adapt = self.settings.adapt_strategy != "off" and bool(inputs)
        if decision.action == "retrain" and (enough or not can_adapt):
            return self.retrain("drift")
        if enough or not can_adapt:  # alert mode: the alert is the report
            return None
        last = self.last_run(adaptation=True)
        if last is not None and (datetime.now(UTC) - last).total_seconds() < self.settings.cooldown_s:
            logger.info("%s: adapted at %s; not again within the cooldown", self.settings.model, last)
            return None
        why = (
            f"{labelled} feedback labels on the window (< min_feedback {self.settings.min_feedback}) "
            f"and drifted inputs ({', '.join(inputs)})"
        )
        logger.info("%s: %s: adapting to the window without labels", self.settings.model, why)
        return self.adapt("drift", promote=decision.action == "retrain", why=why)

    def adapt(
        self, trigger: str, minutes: float | None = None, promote: bool = True, why: str = ""
    ) -> RetrainResult:
        """Adapt production to the latest window of its inputs through the gate now (or only
        report the gate's verdict), and record it in the audit table and metrics; ``why`` (the
        monitor's reason to adapt rather than retrain) leads the recorded reason."""
        started = datetime.now(UTC)
        s = self.settings
        production = self.registry.get(f"{s.model}:production").version
        window = read_window(self.engine, s.model, production, s.window_size, minutes or s.window_minutes)
        logger.info("adaptation of %s started (%s, %d window rows)", s.model, trigger, len(window))
        self.metrics.retrain_running.labels(s.model).set(1)
        try:
            result = adapt(self.registry, window, self.trusted_feedback()[0], s, promote=promote)
        finally:
            self.metrics.retrain_running.labels(s.model).set(0)
        if why:
            result.reason = f"{why}: {result.reason}"
        return self.record(started, f"{trigger}{ADAPT_TRIGGER}", result)

    def publish(self, outcome: CheckOutcome) -> None:
        """Metrics and the Evidently workspace for a check."""
        m, model, result = self.metrics, self.settings.model, outcome.result
        m.checks.labels(model, result.status).inc()
        m.last_check.labels(model).set(time.time())
        m.window_size.labels(model).set(result.window_size)
        m.check_seconds.labels(model).set(outcome.seconds)
        if outcome.version and outcome.version != self._published_version:
            if self._published_version:
                m.production.labels(model, self._published_version).set(0)
            m.production.labels(model, outcome.version).set(1)
            self._published_version = outcome.version
        if result.status == "insufficient_data":
            return
        m.drift_detected.labels(model).set(int(result.drifted))
        m.drift_share.labels(model).set(result.share)
        for column in result.columns:
            m.feature_score.labels(model, column.column).set(column.score)
        if outcome.estimated_accuracy is not None:
            m.estimated_accuracy.labels(model).set(outcome.estimated_accuracy)
        if outcome.estimate_trusted is not None and outcome.novelty_share is not None:
            m.estimate_trusted.labels(model).set(int(outcome.estimate_trusted))
            m.novelty_share.labels(model).set(outcome.novelty_share)
        if outcome.observed_accuracy is not None:
            m.observed_accuracy.labels(model).set(outcome.observed_accuracy)
        if outcome.snapshot is not None:
            features = [c.column for c in result.columns if not is_probability_column(c.column)]
            try:
                record_snapshot(
                    self.settings.workspace_path,
                    model,
                    outcome.snapshot,
                    features,
                    keep=self.settings.keep_checks,
                    max_age_days=self.settings.keep_checks_days,
                )
            except Exception:  # the dashboard is a view: a failure must not stop monitoring
                logger.exception("could not add the check to the Evidently workspace")

    def decide(self, version: str | None) -> Decision:
        """The policy applied to this model's history."""
        last = self.last_run(adaptation=False)
        return decide(
            read_checks(self.engine, self.settings.model),
            version,
            persist_checks=self.settings.persist_checks,
            cooldown_s=self.settings.cooldown_s,
            mode=self.settings.mode,
            last_retrain=last,
            now=datetime.now(UTC),
        )

    def last_run(self, adaptation: bool) -> datetime | None:
        """When the latest retrain on labels (or adaptation) that trained something started."""
        # A run skipped (too few labels, or inputs) trained nothing: it starts no cooldown.
        runs = read_retrains(self.engine, self.settings.model, limit=1, trained=True, adaptation=adaptation)
        return _aware(runs[0]["started_at"]) if runs else None

    def retrain(self, trigger: str) -> RetrainResult:
        """Retrain through the gate now, and record the decision in the audit table and metrics."""
        started = datetime.now(UTC)
        s = self.settings
        logger.info("retrain of %s started (%s)", s.model, trigger)
        self.metrics.retrain_running.labels(s.model).set(1)
        feedback, held = self.trusted_feedback()
        try:
            result = self.retrainer(self.registry, feedback, s)
        finally:
            self.metrics.retrain_running.labels(s.model).set(0)
        if result.numbers is not None:
            result.numbers.quarantined = {**held, **result.numbers.quarantined}
            self.metrics.quarantined.labels(s.model).set(sum(result.numbers.quarantined.values()))
        return self.record(started, trigger, result)

    def record(self, started: datetime, trigger: str, result: RetrainResult) -> RetrainResult:
        """Record a retrain's or an adaptation's decision in the audit table and the metrics."""
        s = self.settings
        record_retrain(
            self.engine,
            {
                "started_at": started,
                "finished_at": datetime.now(UTC),
                "model": s.model,
                "trigger": trigger,
                "production_version": result.production,
                "candidate_version": result.candidate,
                "outcome": result.outcome,
                "reason": result.reason,
                "numbers": result.numbers.to_json() if result.numbers else {},
            },
        )
        self.metrics.retrains.labels(s.model, result.outcome).inc()
        logger.info("%s of %s: %s (%s)", trigger, s.model, result.outcome, result.reason)
        return result

    def trusted_feedback(self) -> tuple[pd.DataFrame, dict[str, int]]:
        """The model's feedback less the sources an operator quarantined; (rows, why -> rows left out)."""
        rows = read_feedback(self.engine, self.settings.model)
        sources = sources_of(rows)
        held: dict[str, int] = {}
        for source, reason in read_quarantined(self.engine, self.settings.model).items():
            mine = sources == source
            if mine.any():
                held[f"source {source}: quarantined by an operator ({reason})"] = int(mine.sum())
            rows, sources = rows[~mine], sources[~mine]
        return rows.reset_index(drop=True), held


def input_drift(outcome: CheckOutcome) -> list[str]:
    """The drifted features that describe the inputs themselves, not the model's answers: a shift
    of the answers alone (another label mix) is not a new domain to adapt to."""
    answers = {*PREDICTION_COLUMNS, *ACCURACY_COLUMNS}
    return [
        c.column
        for c in outcome.result.columns
        if c.drifted and c.column not in answers and not is_probability_column(c.column)
    ]


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes (stored as UTC); make them comparable."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
