"""An image model behind a real `bentoml serve` on loopback: multipart and base64 requests, and a
promotion swapped under image load without a failed request."""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.processes import start_service
from demo.traffic import Traffic, TrafficStats, send_traffic
from tests.helpers import onnx_workers_and_torch, service_env
from training.config import TrainingConfig
from training.pipeline import train_model
from training.registry import ModelRegistry

pytestmark = pytest.mark.slow  # a real `bentoml serve` process


@pytest.fixture(scope="module")
def image_server(
    image_home_template: Path,
    surfaces: Path,
    tiny_vision_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The image registry (v1 in production) with a second version (baseline) as candidate."""
    root = tmp_path_factory.mktemp("image-server")
    home = root / "bentoml"
    shutil.copytree(image_home_template, home)
    registry = ModelRegistry(home)
    config = TrainingConfig(
        name="surfaces", base_model=str(tiny_vision_model), strategy="baseline", profile_rows=20
    )
    v2 = train_model(surfaces, config, registry=registry).version
    # A latency SLO far above a CPU image batch's: this server is about swaps, not load shedding
    # (tests/test_service_units.py), and at 100 ms a busy CI machine shed a request of the swap test.
    settings = {"swap_poll_s": "0.5", "threads": "1", "max_latency_ms": "5000"}
    env = {"BENTOML_HOME": str(home), **service_env("surfaces", home, **settings)}
    service = start_service(env, root / "server.log")
    try:
        service.wait_ready()
        yield {"url": service.url, "registry": registry, "v2": v2, "pid": service.process.pid}
    finally:
        service.stop()


def test_multipart_and_base64_through_a_real_server(image_server: dict[str, Any], surfaces: Path) -> None:
    files = sorted((surfaces / "crack").iterdir())[:3]
    upload = [("images", (f.name, f.read_bytes(), "image/png")) for f in files]
    by_form = httpx.post(f"{image_server['url']}/classify", files=upload, timeout=30)
    assert by_form.status_code == 200, by_form.text
    images = [base64.b64encode(f.read_bytes()).decode() for f in files]
    by_json = httpx.post(f"{image_server['url']}/classify", json={"images": images}, timeout=30)
    assert by_json.status_code == 200, by_json.text
    assert [a["label"] for a in by_form.json()] == [a["label"] for a in by_json.json()]
    bad = httpx.post(
        f"{image_server['url']}/classify", files=[("images", ("x.png", b"\x89PNG broken", "image/png"))]
    )
    assert bad.status_code == 422 and "image 1 (x.png)" in bad.json()["error"]
    assert httpx.get(f"{image_server['url']}/readyz").status_code == 200  # the worker did not crash
    workers, with_torch = onnx_workers_and_torch(image_server["pid"])
    assert workers and not with_torch  # decoding and the graph need no torch: tests/test_service_server.py


def test_a_promotion_swaps_under_image_load_without_a_failed_request(
    image_server: dict[str, Any], surfaces: Path
) -> None:
    registry, new = image_server["registry"], image_server["v2"]
    old = httpx.get(f"{image_server['url']}/model").json()["version"]
    images = [p.read_bytes() for p in sorted(surfaces.rglob("*.png"))[:12]]
    promoted: list[bool] = []

    def swapped(stats: TrafficStats) -> bool:
        if not promoted and len(stats.answers) >= 40:
            registry.promote(new.tag, reason="test: swap under image load")
            promoted.append(True)
        recent = stats.answers[-30:]
        return bool(promoted) and len(recent) == 30 and all(a.version == new.version for a in recent)

    deadline = time.monotonic() + 60
    stats = send_traffic(
        image_server["url"],
        Traffic(images),
        concurrency=6,
        repeat=True,
        until=lambda s: swapped(s) or time.monotonic() > deadline,
    )
    assert {a.status for a in stats.answers} == {200}, stats.failures[:3]
    versions = [a.version for a in stats.answers]
    assert versions[0] == old and versions[-1] == new.version
