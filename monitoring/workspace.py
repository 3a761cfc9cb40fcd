"""The Evidently workspace: one project per model, a snapshot per check, dashboard panels.

`evidently ui --workspace <path>` then shows the history: drift share over time, per-feature
scores, estimated and observed accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PANEL_TAB = "Refit drift"


def add_dashboard(project: Any, features: list[str]) -> None:
    """Panels of a new project: drift share, per-feature p-values, estimated vs observed accuracy."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    dashboard = project.dashboard
    dashboard.add_panel(
        line_plot_panel(
            "Share of drifted features",
            [
                PanelMetric(
                    legend="share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"}
                )
            ],
        ),
        tab=PANEL_TAB,
    )
    dashboard.add_panel(
        line_plot_panel(
            "Per-feature drift p-values (Bonferroni level in the report)",
            [PanelMetric(legend=f, metric="ValueDrift", metric_labels={"column": f}) for f in features],
        ),
        tab=PANEL_TAB,
    )
    dashboard.add_panel(
        line_plot_panel(
            "Accuracy: estimated (CBPE) and observed (feedback)",
            [
                PanelMetric(
                    legend="estimated", metric="MeanValue", metric_labels={"column": "estimated_correct"}
                ),
                PanelMetric(
                    legend="observed", metric="MeanValue", metric_labels={"column": "observed_correct"}
                ),
            ],
        ),
        tab=PANEL_TAB,
    )


def record_snapshot(
    path: Path, model: str, snapshot: Any, features: list[str], keep: int = 500, max_age_days: float = 14.0
) -> str:
    """Add a check's snapshot to the model's project (created with its dashboard on first use),
    then delete the snapshots beyond the newest ``keep`` or older than ``max_age_days``."""
    from evidently.ui.workspace import Workspace

    from monitoring.retention import stale_snapshots

    workspace = Workspace.create(str(path))
    found = workspace.search_project(model)
    if found:
        project = found[0]
    else:
        project = workspace.create_project(model, description=f"Refit drift checks of {model}")
        add_dashboard(project, features)
    workspace.add_run(project.id, snapshot)
    for stale in stale_snapshots(list(workspace.list_runs(project.id)), keep, max_age_days):
        workspace.delete_run(project.id, stale)
    return str(project.id)
