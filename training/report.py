"""Readable evaluation reports of a version: markdown and a self-contained HTML page."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment

from training.evaluation import EvaluationResult

_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.cm td{min-width:2rem}
</style></head><body>
<h1>{{ title }}</h1>
<table>{% for k, v in summary %}<tr><th class="l">{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<h2>Test metrics</h2>
<p>accuracy {{ "%.4f"|format(test.accuracy) }} · macro-F1 {{ "%.4f"|format(test.macro_f1) }} ·
expected calibration error {{ "%.4f"|format(test.ece) }} · n = {{ test.n }}{% if test.missed_defect_rate is not none %}
· missed-defect rate {{ "%.4f"|format(test.missed_defect_rate) }} (defective images predicted as
<b>{{ test.normal_label }}</b>){% endif %}</p>
<h2>Per class</h2>
<table><tr><th class="l">label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{% for label, s in test.per_class.items() %}<tr><td class="l">{{ label }}</td>
<td>{{ "%.3f"|format(s.precision) }}</td><td>{{ "%.3f"|format(s.recall) }}</td>
<td>{{ "%.3f"|format(s.f1) }}</td><td>{{ s.support }}</td></tr>{% endfor %}</table>
<h2>Confusion matrix (rows: true, columns: predicted)</h2>
<table class="cm"><tr><th></th>{% for l in test.labels %}<th title="{{ l }}">{{ loop.index }}</th>{% endfor %}</tr>
{% for row in test.confusion %}{% set i = loop.index0 %}<tr><th class="l">{{ loop.index }}. {{ test.labels[i] }}</th>
{% for n in row %}<td style="background:rgba({{ '40,120,200' if loop.index0 == i else '220,60,60' }},{{ (n / (row|sum or 1)) | round(2) }})">{{ n or "" }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% if examples %}<h2>Worst confusions, with test images</h2>
{% for e in examples %}<p><b>{{ e.true }}</b> predicted as <b>{{ e.predicted }}</b>: {{ e.count }} test image(s)</p>
<p>{% for uri in e.thumbnails %}<img src="{{ uri }}" alt="{{ e.true }} as {{ e.predicted }}" style="margin:2px;border:1px solid #ccc">{% endfor %}</p>
{% endfor %}{% endif %}
{% if ladder %}<h2>auto ladder</h2><table><tr><th class="l">strategy</th><th>val macro-F1</th>
<th>test acc</th><th>test macro-F1</th><th>train s</th><th>trainable</th></tr>
{% for r in ladder %}<tr><td class="l">{{ r.strategy }}</td><td>{{ "%.4f"|format(r.validation_macro_f1) }}</td>
<td>{{ "%.4f"|format(r.test_accuracy) }}</td><td>{{ "%.4f"|format(r.test_macro_f1) }}</td>
<td>{{ "%.1f"|format(r.train_seconds) }}</td><td>{{ r.trainable_params }}</td></tr>{% endfor %}</table>{% endif %}
</body></html>
"""


def render_html(
    title: str,
    summary: dict[str, Any],
    test: EvaluationResult,
    ladder: list[dict[str, Any]],
    examples: list[dict[str, Any]] | None = None,
) -> str:
    """A self-contained HTML report: summary, test metrics, per-class scores, confusion matrix,
    and for images thumbnails of the worst confusions (see :func:`worst_confusions`)."""
    template = Environment(autoescape=True).from_string(_HTML)
    return template.render(
        title=title, summary=list(summary.items()), test=test, ladder=ladder, examples=examples or []
    )


def worst_confusions(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: list[str],
    images: Sequence[Path],
    pairs: int = 3,
    per_pair: int = 4,
) -> list[dict[str, Any]]:
    """The ``pairs`` most frequent (true, predicted) mistakes, each with thumbnails of up to
    ``per_pair`` of its test images."""
    from training.images import thumbnail_uri

    wrong = np.flatnonzero(y_true != y_pred)
    counts: dict[tuple[int, int], list[int]] = {}
    for i in wrong:
        counts.setdefault((int(y_true[i]), int(y_pred[i])), []).append(int(i))
    worst = sorted(counts.items(), key=lambda item: -len(item[1]))[:pairs]
    return [
        {
            "true": labels[t],
            "predicted": labels[p],
            "count": len(rows),
            "thumbnails": [thumbnail_uri(Path(images[i]).read_bytes()) for i in rows[:per_pair]],
        }
        for (t, p), rows in worst
    ]


def render_markdown(
    title: str, summary: dict[str, Any], test: EvaluationResult, ladder: list[dict[str, Any]]
) -> str:
    """The same report as markdown (without the confusion matrix colours)."""
    lines = [f"# {title}", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += [
        "",
        f"**Test:** accuracy {test.accuracy:.4f}, macro-F1 {test.macro_f1:.4f}, "
        f"ECE {test.ece:.4f}, n = {test.n}",
        "",
        "| label | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {label} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} | {s.support} |"
        for label, s in test.per_class.items()
    ]
    if ladder:
        lines += ["", "| rung | val macro-F1 | test acc | test macro-F1 | train s | trainable |"]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        lines += [
            f"| {r['strategy']} | {r['validation_macro_f1']:.4f} | {r['test_accuracy']:.4f} "
            f"| {r['test_macro_f1']:.4f} | {r['train_seconds']:.1f} | {r['trainable_params']:,} |"
            for r in ladder
        ]
    return "\n".join(lines) + "\n"
