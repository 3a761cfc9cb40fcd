"""What `refit demo` found, and the summary it prints: versions, checks, retrains, traffic, where to look."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from demo.traffic import TrafficStats
from monitoring.history import ADAPT_TRIGGER
from training.console import render_versions
from training.registry import ModelRegistry

CALM = "in-distribution"  # the traffic phase before the drift


@dataclass
class DemoOutcome:
    """The loop's facts once the traffic has stopped."""

    out: Path
    first: str  # v1
    production: str  # the production version at the end
    versions: list[Any]
    checks: list[dict[str, Any]]  # oldest first
    retrains: list[dict[str, Any]]  # oldest first
    phases: dict[str, TrafficStats]
    onset: datetime  # wall-clock time of the drift onset
    urls: dict[str, str]
    workspace: Path
    seconds: float
    problems: list[str] = field(default_factory=list)

    @classmethod
    def collect(
        cls,
        *,
        out: Path,
        registry: ModelRegistry,
        model: str,
        first: str,
        calm: TrafficStats,
        drifted: dict[str, TrafficStats],
        checks: list[dict[str, Any]],
        retrains: list[dict[str, Any]],
        onset: float,
        urls: dict[str, str],
        workspace: Path,
        seconds: float,
    ) -> DemoOutcome:
        """Read the registry's state and judge whether the loop closed."""
        production = registry.get(f"{model}:production").version
        onset_wall = datetime.fromtimestamp(time.time() - (time.monotonic() - onset), tz=UTC)
        outcome = cls(
            out=out,
            first=first,
            production=production,
            versions=registry.versions(model),
            checks=checks,
            retrains=retrains,
            phases={CALM: calm, **drifted},
            onset=onset_wall,
            urls=urls,
            workspace=workspace,
            seconds=seconds,
        )
        outcome.problems = outcome.find_problems()
        return outcome

    def find_problems(self) -> list[str]:
        """Why the loop did not close (empty when it did)."""
        problems = []
        if not any(r["outcome"] == "promoted" for r in self.retrains):
            outcomes = ", ".join(f"{r['outcome']} ({r['reason']})" for r in self.retrains) or "none ran"
            problems.append(f"the monitor promoted no version; retrains: {outcomes}")
        drifted = {name: stats for name, stats in self.phases.items() if name != CALM}
        if self.production == self.first:
            problems.append(f"production is still v1 ({self.first})")
        elif not any(stats.versions.get(self.production) for stats in drifted.values()):
            problems.append(f"the service never answered with the promoted version {self.production}")
        for name, stats in drifted.items():
            if len(stats.versions) < 2:
                problems.append(
                    f"no new version answered the {name} traffic (only {', '.join(stats.versions)})"
                )
        failed = sum(stats.failed for stats in self.phases.values())
        if failed:
            first = next(f for stats in self.phases.values() for f in stats.failures)
            problems.append(f"{failed} requests failed, the first: {first}")
        return problems

    @property
    def closed(self) -> bool:
        """A version promoted by the monitor served, each drifted phase saw a new version, and no
        request failed."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """``summary.json``: the facts a script would check."""
        return {
            "closed": self.closed,
            "problems": self.problems,
            "seconds": round(self.seconds, 1),
            "first_version": self.first,
            "production_version": self.production,
            "traffic": {
                name: {
                    "requests": s.sent,
                    "failed": s.failed,
                    "feedback": s.feedback,
                    "by_version": dict(s.versions),
                    "accuracy_by_version": {v: round(s.correct[v] / n, 4) for v, n in s.versions.items()},
                }
                for name, s in self.phases.items()
            },
            "checks": [
                {k: c[k] for k in ("checked_at", "version", "status", "share", "report")} for c in self.checks
            ],
            "retrains": [
                {k: r[k] for k in ("trigger", "outcome", "reason", "candidate_version", "numbers")}
                for r in self.retrains
            ],
            "urls": self.urls,
            "workspace": str(self.workspace),
        }


def render_summary(outcome: DemoOutcome, console: Console) -> None:
    """Print the versions, the check timeline, the retrains, the traffic and where to look next."""
    console.print(render_versions(outcome.versions))
    console.print(render_checks(outcome))
    for r in outcome.retrains:
        numbers = ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r["numbers"].items()
        )
        shipped = r["numbers"].get("shipped_version")
        refit = f" (shipped as its refit {shipped})" if shipped and shipped != r["candidate_version"] else ""
        adapted = r["trigger"].endswith(ADAPT_TRIGGER)
        console.print(
            f"{'adaptation' if adapted else 'retrain'} ({r['trigger'].removesuffix(ADAPT_TRIGGER)}): "
            f"[bold]{r['outcome']}[/] {r['candidate_version'] or ''}{refit}: {r['reason']}"
        )
        if numbers:
            console.print(f"    {numbers}")
    console.print(render_traffic(outcome))
    reports = sorted({str(Path(c["report"]).parent) for c in outcome.checks if c.get("report")})
    console.print(f"HTML drift reports: {', '.join(reports) or 'none written'}")
    console.print(f"Evidently workspace: DO_NOT_TRACK=1 evidently ui --workspace {outcome.workspace}")
    for name, url in outcome.urls.items():
        console.print(f"{name}: {url}  [dim](up while the demo runs; `refit demo --keep` leaves it up)[/]")
    if outcome.closed:
        console.print(
            f"[bold green]loop closed[/] in {outcome.seconds:.0f} s: {outcome.first} -> "
            f"{outcome.production}, no failed requests"
        )
    else:
        console.print("[bold red]loop NOT closed:[/] " + "; ".join(outcome.problems))


def render_checks(outcome: DemoOutcome) -> Table:
    """The drift checks, timed from the drift onset (negative: before it)."""
    table = Table(title="drift checks (seconds from the drift onset)")
    for column in ("t", "version", "status", "drift share", "est. acc", "obs. acc", "report"):
        table.add_column(column)
    for c in outcome.checks:
        at = c["checked_at"]
        at = at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite hands back naive UTC
        seconds = (at - outcome.onset).total_seconds()
        table.add_row(
            f"{seconds:+.0f}",
            str(c["version"]),
            c["status"],
            f"{c['share']:.2f}",
            _fmt(c.get("estimated_accuracy")),
            _fmt(c.get("observed_accuracy")),
            Path(c["report"]).name if c.get("report") else "",
        )
    return table


def render_traffic(outcome: DemoOutcome) -> Table:
    """Requests, failures, feedback and accuracy per phase; which versions answered."""
    table = Table(title="traffic")
    for column in ("phase", "requests", "failed", "feedback", "answered by (accuracy)"):
        table.add_column(column)
    for name, s in outcome.phases.items():
        answered = ", ".join(f"{v}: {n} ({s.correct[v] / n:.3f})" for v, n in s.versions.items())
        table.add_row(name, str(s.sent), str(s.failed), str(s.feedback), answered)
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
