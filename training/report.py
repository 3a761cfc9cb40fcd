"""Readable evaluation reports of a version: markdown and a self-contained HTML page."""

from __future__ import annotations

from typing import Any

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
expected calibration error {{ "%.4f"|format(test.ece) }} · n = {{ test.n }}</p>
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
{% if ladder %}<h2>auto ladder</h2><table><tr><th class="l">strategy</th><th>val macro-F1</th>
<th>test acc</th><th>test macro-F1</th><th>train s</th><th>trainable</th></tr>
{% for r in ladder %}<tr><td class="l">{{ r.strategy }}</td><td>{{ "%.4f"|format(r.validation_macro_f1) }}</td>
<td>{{ "%.4f"|format(r.test_accuracy) }}</td><td>{{ "%.4f"|format(r.test_macro_f1) }}</td>
<td>{{ "%.1f"|format(r.train_seconds) }}</td><td>{{ r.trainable_params }}</td></tr>{% endfor %}</table>{% endif %}
</body></html>
"""


def render_html(
    title: str, summary: dict[str, Any], test: EvaluationResult, ladder: list[dict[str, Any]]
) -> str:
    """A self-contained HTML report: summary, test metrics, per-class scores, confusion matrix."""
    template = Environment(autoescape=True).from_string(_HTML)
    return template.render(title=title, summary=list(summary.items()), test=test, ladder=ladder)


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
