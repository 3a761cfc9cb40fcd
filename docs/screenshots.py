"""Make the README's screenshots from a real demo run (by hand: `.venv/bin/python -m docs.screenshots`).

Runs the loop of `make demo` with Debian's Prometheus scraping it from the start, then renders with
headless Chromium: the Evidently project dashboard, Prometheus graphs of the request rate and the
drift share over the run, one HTML drift report, and the service's API docs. Writes PNG files to
``docs/img/``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlencode

import httpx
from rich.console import Console

from demo.loop import loop_demo
from demo.processes import LoopbackProcess
from tests.servers import chromium, prometheus_server

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "img"
REQUESTS = 'rate(bentoml_service_request_total{endpoint="/classify"}[15s])'
GRAPHS = {
    "prometheus-requests.png": f"sum by (http_response_code) ({REQUESTS})",
    "prometheus-drift.png": "refit_drift_share",
}


def shoot(url: str, name: str, height: int = 1000) -> None:
    """A 1400-pixel-wide screenshot of ``url`` into docs/img/``name``."""
    chromium(url, f"--screenshot={IMAGES / name}", f"--window-size=1400,{height}", budget_ms=20000)
    print(f"wrote {IMAGES / name}")


def main() -> None:
    """Run the demo, scrape it, render the pages."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    console = Console()
    scratch = Path(tempfile.mkdtemp(prefix="refit-screens-"))
    with contextlib.ExitStack() as stack:
        prometheus: dict[str, str] = {}

        def start_prometheus(service: LoopbackProcess, monitor: LoopbackProcess) -> None:
            targets = {
                "refit-service": service.url.removeprefix("http://"),
                "refit-monitor": monitor.url.removeprefix("http://"),
            }
            rules = ROOT / "deploy" / "prometheus" / "alerts.yml"
            prometheus["url"] = stack.enter_context(prometheus_server(targets, rules, scratch / "prometheus"))

        run = stack.enter_context(loop_demo(ROOT / "docs" / ".demo", console, on_started=start_prometheus))
        [project] = httpx.get(f"{run.ui.url}/api/projects", timeout=10).json()
        shoot(f"{run.ui.url}/projects/{project['id']}", "evidently-dashboard.png", height=1900)
        minutes = max(5, int(run.outcome.seconds / 60) + 1)
        for name, expr in GRAPHS.items():
            query = {"g0.expr": expr, "g0.tab": "0", "g0.range_input": f"{minutes}m"}
            shoot(f"{prometheus['url']}/graph?{urlencode(query)}", name, height=800)
        report = next(c["report"] for c in run.outcome.checks if c["status"] == "drift" and c["report"])
        shoot(Path(report).as_uri(), "drift-report.png", height=1400)
        shoot(f"{run.service.url}/", "api-docs.png", height=1000)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
