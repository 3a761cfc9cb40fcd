"""A drift check's HTML report: the verdict and its numbers first, then each feature's evidence.

Self-contained and small (tens of kB, inline SVG, no script): a report is written at every check,
so Evidently's interactive HTML (about 4 MB each) is only written beside it on request
(``evidently_html``); the Evidently workspace keeps every snapshot for its UI either way.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from monitoring.drift import ColumnDrift, DriftResult
from monitoring.features import CATEGORICAL_COLUMNS, NOVELTY_COLUMN, is_probability_column

PLOT_WIDTH, PLOT_HEIGHT, BINS = 320, 90, 24
REFERENCE_COLOUR, WINDOW_COLOUR = "#9aa5b1", "#d9480f"
TOP_LABELS = 12  # labels shown in the label-mix plot, largest change in share first
TOP_PROBABILITIES = 6  # class-probability tests shown besides the drifted ones, strongest first


@dataclass
class ReportContext:
    """What the report says beside the test results."""

    model: str
    version: str
    estimated_accuracy: float | None
    observed_accuracy: float | None
    labelled: int
    estimate_note: str  # whether the label-free estimate can be trusted on this window, and why
    seconds: float  # the whole check: window, features, tests
    # Images: per drifted descriptor, thumbnails (data URIs) of "reference" and "window" images at
    # its extremes, in the direction the window moved
    thumbnails: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def render_report(
    result: DriftResult, reference: pd.DataFrame, current: pd.DataFrame, context: ReportContext
) -> str:
    """The report as one HTML page: summary, features ranked by evidence, distributions."""
    ranked = shown_columns(result.columns)
    hidden = len(result.columns) - len(ranked)
    verdict = "DRIFT" if result.drifted else ("OK" if result.status == "ok" else "INSUFFICIENT DATA")
    colour = "#c92a2a" if result.drifted else "#2b8a3e"
    rows = "".join(
        f"<tr><td>{html.escape(c.column)}</td><td>{html.escape(c.method)}</td>"
        f"<td>{c.score:.2e}</td><td>{'yes' if c.drifted else ''}</td></tr>"
        for c in ranked
    )
    if hidden:
        rows += f"<tr><td colspan='4'>{hidden} more class-probability tests, none drifted</td></tr>"
    plots = "".join(
        f"<figure><figcaption>{html.escape(c.column)} (p = {c.score:.2e})</figcaption>"
        f"{_plot(c.column, reference, current)}</figure>"
        for c in ranked
        if c.column in reference.columns and c.column in current.columns
    )
    summary = [
        ("verdict", f"<b style='color:{colour}'>{verdict}</b>"),
        (
            "drifted features",
            f"{sum(c.drifted for c in result.columns)} of {len(result.columns)} (share {result.share:.2f})",
        ),
        ("per-feature level", _levels(result)),
        ("window", f"{result.window_size:,} predictions of {html.escape(context.version)}"),
        ("reference", f"{result.reference_size:,} held-out rows of the version's profile"),
        ("accuracy", _accuracy(context)),
        ("check took", f"{context.seconds:.2f} s (tests {result.seconds:.2f} s)"),
        ("checked at", html.escape(result.checked_at)),
    ]
    head = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Drift check of {html.escape(context.model)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Drift check of {html.escape(context.model)}:{html.escape(context.version)}</h1>"
        f"<table class='summary'>{head}</table>"
        "<h2>Features, strongest evidence first</h2>"
        "<table><tr><th>feature</th><th>test</th><th>p-value</th><th>drifted</th></tr>"
        f"{rows}</table>"
        f"<h2>Distributions: <span style='color:{REFERENCE_COLOUR}'>reference</span> and "
        f"<span style='color:{WINDOW_COLOUR}'>window</span></h2><div class='plots'>{plots}</div>"
        f"{_thumbnails(context)}</body></html>"
    )


def shown_columns(columns: list[ColumnDrift]) -> list[ColumnDrift]:
    """What a report lists of a check's ``columns``, strongest evidence first: every feature but
    the class probabilities, and of those the drifted ones and the strongest few."""
    ranked = sorted(columns, key=lambda c: c.score)
    probabilities = [c for c in ranked if is_probability_column(c.column)]
    keep = {id(c) for c in probabilities if c.drifted} | {id(c) for c in probabilities[:TOP_PROBABILITIES]}
    return [c for c in ranked if not is_probability_column(c.column) or id(c) in keep]


def _levels(result: DriftResult) -> str:
    """Each group's significance level: the features', novelty's and the class probabilities'
    (weighted Bonferroni), or one level when every feature has the same."""
    columns = result.columns
    if len({c.threshold for c in columns}) <= 1:
        level = columns[0].threshold if columns else float("nan")
        return f"{level:.2e} (alpha / features, Bonferroni)"
    probabilities = [c for c in columns if is_probability_column(c.column)]
    novelty = [c for c in columns if c.column == NOVELTY_COLUMN]
    others = [c for c in columns if not is_probability_column(c.column) and c.column != NOVELTY_COLUMN]
    groups = (
        (others, f"each of {len(others)} features"),
        (novelty, "novelty"),
        (probabilities, f"each of {len(probabilities)} class probabilities"),
    )
    shown = ", ".join(f"{group[0].threshold:.2e} for {what}" for group, what in groups if group)
    return f"{shown} (weighted Bonferroni: the levels sum to alpha)"


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#212529}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border-bottom:1px solid #dee2e6;padding:.3em .8em;text-align:left}"
    ".summary th{width:12em}.plots{display:flex;flex-wrap:wrap;gap:1em}"
    "figure{margin:0}figcaption{font-size:.85em}"
)


def _thumbnails(context: ReportContext) -> str:
    if not context.thumbnails:
        return ""
    parts = ["<h2>Images at the extremes of the drifted descriptors</h2>"]
    for column, sides in context.thumbnails.items():
        parts.append(f"<h3>{html.escape(column)}</h3>")
        for side, uris in sides.items():
            images = "".join(f"<img src='{uri}' alt='{side}' style='margin:2px'>" for uri in uris)
            parts.append(f"<p>{side}: {images or 'none stored'}</p>")
    return "".join(parts)


def _accuracy(context: ReportContext) -> str:
    estimated = "n/a" if context.estimated_accuracy is None else f"{context.estimated_accuracy:.3f}"
    observed = (
        f"{context.observed_accuracy:.3f} on {context.labelled} feedback labels"
        if context.observed_accuracy is not None
        else "no feedback labels in the window"
    )
    note = f"<br><small>{html.escape(context.estimate_note)}</small>" if context.estimate_note else ""
    return f"estimated (CBPE) {estimated}; observed {observed}{note}"


def _plot(column: str, reference: pd.DataFrame, current: pd.DataFrame) -> str:
    if column in CATEGORICAL_COLUMNS:
        return _label_bars(reference[column], current[column])
    return _histogram(reference[column].to_numpy(float), current[column].to_numpy(float))


def _histogram(reference: np.ndarray, current: np.ndarray) -> str:
    """Reference as grey bars, the window as an orange step line, both as densities."""
    pooled = np.concatenate([reference, current])
    pooled = pooled[np.isfinite(pooled)]
    if not len(pooled):
        return ""
    low, high = np.quantile(pooled, [0.005, 0.995])
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, BINS + 1)
    ref = np.histogram(np.clip(reference, low, high), edges)[0] / max(1, len(reference))
    cur = np.histogram(np.clip(current, low, high), edges)[0] / max(1, len(current))
    top = max(ref.max(), cur.max(), 1e-9)
    width = PLOT_WIDTH / BINS
    bars = "".join(
        f"<rect x='{i * width:.1f}' y='{PLOT_HEIGHT * (1 - r / top):.1f}' width='{width - 1:.1f}' "
        f"height='{PLOT_HEIGHT * r / top:.1f}' fill='{REFERENCE_COLOUR}'/>"
        for i, r in enumerate(ref)
    )
    heights = PLOT_HEIGHT * (1 - cur / top)
    points = " ".join(f"{x * width:.1f},{y:.1f} {(x + 1) * width:.1f},{y:.1f}" for x, y in enumerate(heights))
    axis = f"<text x='0' y='{PLOT_HEIGHT + 12}'>{low:.3g}</text>"
    axis += f"<text x='{PLOT_WIDTH}' y='{PLOT_HEIGHT + 12}' text-anchor='end'>{high:.3g}</text>"
    return _svg(
        f"{bars}<polyline points='{points}' fill='none' stroke='{WINDOW_COLOUR}' stroke-width='2'/>{axis}"
    )


def _label_bars(reference: pd.Series, current: pd.Series) -> str:
    """The labels whose share changed most: reference share (grey) over window share (orange)."""
    ref = reference.value_counts(normalize=True)
    cur = current.value_counts(normalize=True)
    shares = pd.DataFrame({"ref": ref, "cur": cur}).fillna(0.0)
    shares = shares.loc[(shares["cur"] - shares["ref"]).abs().sort_values(ascending=False).index[:TOP_LABELS]]
    top = max(float(shares.to_numpy().max()), 1e-9)
    row, label_width = 14, 110
    parts = []
    for i, (label, values) in enumerate(shares.iterrows()):
        y = i * row
        parts.append(f"<text x='0' y='{y + 10}'>{html.escape(str(label))[:18]}</text>")
        for offset, (share, fill) in enumerate(
            ((values["ref"], REFERENCE_COLOUR), (values["cur"], WINDOW_COLOUR))
        ):
            length = (PLOT_WIDTH - label_width) * share / top
            top_edge = y + 1 + offset * 6
            parts.append(
                f"<rect x='{label_width}' y='{top_edge}' width='{length:.1f}' height='5' fill='{fill}'/>"
            )
    return _svg("".join(parts), height=row * len(shares))


def _svg(body: str, height: int = PLOT_HEIGHT + 16) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{PLOT_WIDTH}' height='{height}' "
        f"font-size='10' font-family='sans-serif'>{body}</svg>"
    )
