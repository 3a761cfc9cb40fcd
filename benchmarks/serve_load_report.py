"""The serving load benchmark's summary: medians over rounds, the targets, the markdown table."""

from __future__ import annotations

import statistics
from typing import Any

SYSTEMS = ("refit-torch", "refit-onnx", "refit-onnx-int8", "naive")


def summarise(
    cells: dict[tuple[str, int], list[dict[str, Any]]], rss: dict[str, float]
) -> list[dict[str, Any]]:
    """Median over rounds per (system, concurrency); errors are summed."""
    rows = []
    for (system, concurrency), runs in cells.items():
        row: dict[str, Any] = {"system": system, "concurrency": concurrency}
        for key in ("rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch"):
            values = [r[key] for r in runs]
            # A peer server reports no batch sizes: its mean_batch stays None.
            row[key] = None if None in values else round(statistics.median(values), 2)
        row["errors"] = sum(r["errors"] for r in runs)
        row["rss_mb"] = round(rss[system], 1)
        rows.append(row)
    return rows


def check_targets(rows: list[dict[str, Any]], inputs: str = "texts") -> list[str]:
    """The serving targets (3x the naive server, 60% of the in-process limit, p99), each with its
    measured ratio and whether it was met; ``inputs`` names what a request carries."""
    cell = {(r["system"], r["concurrency"]): r for r in rows}
    limit = max(r["rps"] for r in rows if r["system"] == "limit")
    lines = []
    at32 = {s: cell[(s, 32)]["rps"] for s in SYSTEMS if (s, 32) in cell}
    if at32:
        best = max((s for s in at32 if s != "naive"), key=lambda s: at32[s])
        if at32.get("naive"):
            ratio = at32[best] / at32["naive"]
            verdict = _met(ratio >= 3)
            lines.append(f"{best} at concurrency 32 vs naive: {ratio:.2f}x (target >= 3x): {verdict}")
        share = at32[best] / limit
        lines.append(
            f"{best} at concurrency 32 vs in-process limit: {share:.2%} (target >= 60%): {_met(share >= 0.6)}"
        )
        errors = sum(r["errors"] for r in rows if r["system"] == best)
        lines.append(f"{best} errors over all runs: {errors} (target 0): {_met(errors == 0)}")
        if (best, 8) in cell and (best, 1) in cell:
            ratio = cell[(best, 8)]["p99_ms"] / cell[(best, 1)]["p50_ms"]
            verdict = _met(ratio <= 3)
            lines.append(
                f"{best} p99 at concurrency 8 / single-request p50: {ratio:.2f}x (target <= 3x): {verdict}"
                + latency_bound(rows, 8, cell[(best, 1)]["p50_ms"], inputs)
            )
    return lines


def latency_bound(
    rows: list[dict[str, Any]], concurrency: int, single_p50_ms: float, inputs: str = "texts"
) -> str:
    """Little's law's floor on the latency at ``concurrency`` clients, as a clause for the report.

    The mean latency is at least concurrency / (the best in-process inputs/s at batches up to that
    size), and p99 lies above the mean: no server on this machine can do better.
    """
    best = max(
        (r["rps"] for r in rows if r["system"] == "limit" and r["concurrency"] <= concurrency), default=0
    )
    if not best:
        return ""
    floor_ms = concurrency / best * 1000
    return (
        f" (lower bound on this machine, Little's law: mean latency >= {concurrency} / {best:.0f} "
        f"{inputs}/s = {floor_ms:.1f} ms = {floor_ms / single_p50_ms:.1f}x the single-request p50)"
    )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def render_markdown(rows: list[dict[str, Any]], targets: list[str], env: dict[str, Any]) -> str:
    """The results table and the target checks."""
    keys = ("system", "concurrency", "rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch", "errors", "rss_mb")
    inputs = env.get("inputs", "texts")
    lines = [
        f"# Serving load: one {inputs[:-1]} per request, closed-loop clients",
        "",
        f"{env['machine']}; {env['when']}; {env['layout']}; {env['rounds']} interleaved rounds of "
        f"{env['duration']} s per cell (the in-process limit too), medians. `limit` rows: the best "
        f"in-process backend, concurrency = batch size, rps = {inputs}/s.",
        "",
        "| " + " | ".join(keys) + " |",
        "| " + " | ".join("---" for _ in keys) + " |",
    ]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    lines += ["", "## Targets", "", *[f"- {t}" for t in targets], ""]
    return "\n".join(lines)


def render_peers_markdown(
    rows: list[dict[str, Any]],
    targets: list[str],
    env: dict[str, Any],
    tuning: dict[str, list[tuple[str, float, float, int, bool]]],
    winners: dict[int, str],
    notes: dict[str, str],
) -> str:
    """The peers table, what was tried for each peer, the limit's layouts, peers that did not run,
    and the targets."""
    keys = ("system", "concurrency", "rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch", "errors", "rss_mb")
    versions = ", ".join(f"{name}: {version}" for name, version in env["versions"].items()) or "none"
    lines = [
        "# Serving peers: the same ONNX model behind each server, one text per request",
        "",
        f"{env['machine']}; {env['when']}; one server up at a time; {env['rounds']} interleaved rounds "
        f"of {env['duration']} s per cell, medians. Model: {env['model']}. Peers ran: "
        f"{', '.join(env['ran']) or 'none'} ({versions}). `limit` rows: the model called in-process "
        "with no server, the best layout of processes x threads at each batch size "
        f"({', '.join(f'{size}: {layout}' for size, layout in sorted(winners.items()))}); "
        "concurrency = batch size, rps = texts/s. `mean_batch` is known for Refit only.",
        "",
        "![throughput and p99 per concurrency](serve_peers.png)",
        "",
        "| " + " | ".join(keys) + " |",
        "| " + " | ".join("---" for _ in keys) + " |",
    ]
    lines += ["| " + " | ".join("-" if r[k] is None else str(r[k]) for k in keys) + " |" for r in rows]
    lines += ["", "## Targets", "", *[f"- {t}" for t in targets], ""]
    if tuning:
        lines += [
            "## Batching knobs tried (one run each at concurrency "
            f"{env['tune_concurrency']}, {env['tune_duration']} s; the best was measured above)",
            "",
            "| peer | setting | texts/s | p99_ms | errors | chosen |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, tried in tuning.items():
            lines += [
                f"| {name} | {setting} | {rps:.0f} | {p99:.0f} | {errors} | {'yes' if chosen else ''} |"
                for setting, rps, p99, errors, chosen in tried
            ]
        lines.append("")
    if notes:
        lines += ["## Peers that did not run", ""]
        lines += [
            f"- {name}: {note.strip().splitlines()[-1] if note.strip() else 'no message'}"
            for name, note in notes.items()
        ]
        lines.append("")
    return "\n".join(lines)


def plot_peers(rows: list[dict[str, Any]], path: Any) -> None:
    """Texts/s and p99 per concurrency, one line per system (the limit dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in dict.fromkeys(r["system"] for r in rows):
        cells = sorted((r["concurrency"], r["rps"], r["p99_ms"]) for r in rows if r["system"] == system)
        style = {"linestyle": "--", "color": "grey"} if system == "limit" else {"marker": "o"}
        left.plot([c for c, _, _ in cells], [rps for _, rps, _ in cells], label=system, **style)
        if system != "limit":
            right.plot([c for c, _, _ in cells], [p99 for _, _, p99 in cells], label=system, **style)
    for axis, label in ((left, "texts/s"), (right, "p99 latency, ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients (limit: batch size)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
