"""An image model behind the service, in-process: base64 and multipart requests, every bad-image
class by its status and message, the inference log's image store, feedback on an image."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.helpers import serve_registry_copy


@pytest.fixture
def image_client(
    image_home_template: Path, tmp_path: Path, service_app: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The service over a private copy of the image registry, in-process, started and ready."""
    with serve_registry_copy(image_home_template, tmp_path, "surfaces", service_app, monkeypatch) as client:
        yield client


def _png(side: int = 48, shade: int = 120, noisy: bool = False) -> bytes:
    if noisy:
        array = np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)
        image = Image.fromarray(array)
    else:
        image = Image.new("RGB", (side, side), (shade, shade, shade))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_base64_and_multipart_requests_get_the_same_answers(image_client: Any, surfaces: Path) -> None:
    files = sorted((surfaces / "scratch").iterdir())[:2]
    images = [f.read_bytes() for f in files]
    by_json = image_client.post("/classify", json={"images": [_b64(i) for i in images]})
    assert by_json.status_code == 200, by_json.text
    upload = [("images", (f.name, f.read_bytes(), "image/png")) for f in files]
    by_form = image_client.post("/classify", files=upload)
    assert by_form.status_code == 200, by_form.text
    answers, again = by_json.json(), by_form.json()
    assert len(answers) == 2
    assert set(answers[0]) >= {"request_id", "label", "confidence", "top_k", "truncated", "model", "version"}
    assert answers[0]["truncated"] is False and answers[0]["model"] == "surfaces"
    assert [a["label"] for a in answers] == [a["label"] for a in again]
    np.testing.assert_allclose(
        [a["confidence"] for a in answers], [a["confidence"] for a in again], atol=1e-5
    )
    info = image_client.get("/model").json()
    assert info["modality"] == "image" and info["image_size"] == 32


@pytest.mark.parametrize(
    ("images", "status", "message"),
    [
        ([b"just some text"], 422, r"image 1 is not an image Refit can read \(14 bytes"),
        ([_png(noisy=True), _png(noisy=True)[:500]], 422, r"image 2 is truncated or corrupt"),
        ([_png(side=8)], 422, r"image 1 is 8x8 pixels; expected at least 32 pixels a side"),
        ([b"GIF89a" + _png()[6:]], 422, r"image 1 is (not an image|truncated)"),
        ([_png()] * 17, 413, r"Too many images: 17 in one request, expected at most 16"),
    ],
    ids=["not-an-image", "truncated", "too-small", "fake-gif", "too-many"],
)
def test_a_bad_image_gets_a_4xx_naming_it(
    image_client: Any, images: list[bytes], status: int, message: str
) -> None:
    import re

    response = image_client.post("/classify", json={"images": [_b64(i) for i in images]})
    assert response.status_code == status, response.text
    assert re.search(message, response.json()["error"]), response.json()
    assert image_client.post("/classify", json={"images": [_b64(_png())]}).status_code == 200


def test_unsupported_formats_bombs_and_big_files_are_named(image_client: Any) -> None:
    gif = io.BytesIO()
    Image.new("RGB", (40, 40)).save(gif, format="GIF")
    response = image_client.post("/classify", files=[("images", ("anim.gif", gif.getvalue(), "image/gif"))])
    assert response.status_code == 415
    assert (
        response.json()["error"]
        == "image 1 (anim.gif) is a GIF image; expected one of JPEG, PNG, BMP, TIFF, WEBP."
    )
    bomb = io.BytesIO()
    Image.new("L", (7000, 6000)).save(bomb, format="PNG")  # 42 M pixels in a few KB
    response = image_client.post("/classify", files=[("images", ("bomb.png", bomb.getvalue(), "image/png"))])
    assert response.status_code == 413
    assert "image 1 (bomb.png) has too many pixels (7000x6000); expected at most 40,000,000" in response.text
    big = _png(side=1900, noisy=True)  # 10.8 MB as PNG
    response = image_client.post("/classify", files=[("images", ("big.png", big, "image/png"))])
    assert response.status_code == 413
    assert f"image 1 (big.png) is {len(big):,} bytes; expected at most 10,000,000" in response.text


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"json": {"texts": ["hello"]}}, 400, r"This service classifies images: expected \{\"images\""),
        ({"json": {"images": ["not base64!"]}}, 400, r"image 1 is not valid base64"),
        ({"json": {"images": []}}, 400, r"No images: expected 1 to 16 images"),
        (
            {"content": b"<xml/>", "headers": {"content-type": "application/xml"}},
            415,
            r"expected application/json",
        ),
        ({"files": {"note": (None, "no files")}}, 400, r"No image files in the multipart body"),
    ],
    ids=["texts", "bad-base64", "empty", "xml", "form-without-files"],
)
def test_a_malformed_image_request_is_a_4xx(
    image_client: Any, kwargs: dict[str, Any], status: int, message: str
) -> None:
    import re

    response = image_client.post("/classify", **kwargs)
    assert response.status_code == status, response.text
    assert re.search(message, response.json()["error"]), response.json()


def test_the_log_keeps_each_image_and_feedback_finds_it(image_client: Any, surfaces: Path) -> None:
    image = next((surfaces / "spot").iterdir()).read_bytes()
    answer = image_client.post("/classify", json={"images": [_b64(image)]}).json()[0]
    response = image_client.post("/feedback", json={"request_id": answer["request_id"], "label": "spot"})
    assert response.status_code == 200, response.text
    database = image_client.home / "refit" / "inference.db"
    with sqlite3.connect(database) as conn:
        key, meta = conn.execute(
            "SELECT text, input FROM predictions WHERE request_id = ?", (answer["request_id"],)
        ).fetchone()
        (labelled,) = conn.execute(
            "SELECT text FROM feedback WHERE request_id = ?", (answer["request_id"],)
        ).fetchone()
    assert key.startswith("sha256:") and labelled == key
    stored = database.parent / "images" / key[7:9] / key[7:]
    assert stored.read_bytes() == image
    descriptors = json.loads(meta)
    assert descriptors["bytes"] == len(image) and descriptors["width"] == 40.0
    assert set(descriptors) >= {"brightness", "contrast", "sharpness", "saturation", "aspect_ratio"}


def test_the_image_api_of_a_text_model_is_a_404(client: Any) -> None:
    response = client.post("/classify_images", json={"images": [_b64(_png())]})
    assert response.status_code == 404
    assert "This service classifies texts" in response.json()["error"]


def test_refit_drift_checks_an_image_model_on_image_descriptors(
    image_client: Any,
    surfaces: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from demo.surfaces import write_surfaces
    from tests.helpers import run_cli, wait_for_logged_predictions

    # Traffic under a much darker light than training's: brightness must be the drifted feature.
    dark = write_surfaces(tmp_path / "dark", per_class=6, seed=7, size=40, lighting=-0.9)
    images = [_b64(p.read_bytes()) for p in sorted(dark.rglob("*.png"))]
    for start in range(0, len(images), 8):
        assert image_client.post("/classify", json={"images": images[start : start + 8]}).status_code == 200
    # The same image sent again is one observation of the window, not two.
    assert image_client.post("/classify", json={"images": images[:4]}).status_code == 200
    wait_for_logged_predictions(image_client.home, len(images) + 4)
    config = tmp_path / "monitor.yaml"
    config.write_text("min_window: 10\nmetrics_port: 0\n")
    home = str(image_client.home)
    code, out = run_cli(
        ["drift", "--model", "surfaces", "--home", home, "--config", str(config)], capsys, monkeypatch
    )
    assert code == 0, out
    assert "window 24" in out and "brightness" in out, out
    [report] = (image_client.home / "refit" / "reports").glob("surfaces-drift-*.html")
    page = report.read_text()
    assert "Images at the extremes of the drifted descriptors" in page and "<h3>brightness</h3>" in page
    assert page.count("data:image/png;base64,") >= 2  # reference and window images


@pytest.mark.slow  # `refit retrain` trains its candidate in a child `refit train`
def test_refit_retrain_trains_an_image_candidate_on_image_feedback(
    image_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from demo.surfaces import write_surfaces
    from tests.helpers import run_cli
    from training.registry import ModelRegistry

    dark = write_surfaces(tmp_path / "dark", per_class=4, seed=11, size=40, lighting=-0.6)
    for path in sorted(dark.rglob("*.png")):
        answer = image_client.post(
            "/classify", files=[("images", (path.name, path.read_bytes(), "image/png"))]
        )
        request_id = answer.json()[0]["request_id"]
        stored = image_client.post("/feedback", json={"request_id": request_id, "label": path.parent.name})
        assert stored.status_code == 200, stored.text
    config = tmp_path / "monitor.yaml"
    config.write_text("min_feedback: 10\nmetrics_port: 0\n")
    home = image_client.home
    # Run from the folder above the registry and name it relatively, as `--home bentoml` would:
    # the candidate trains in a child process on a CSV elsewhere, whose relative paths would
    # read from the CSV's own folder.
    monkeypatch.chdir(home.parent)
    args = ["retrain", "--model", "surfaces", "--home", home.name, "--config", str(config)]
    code, out = run_cli(args, capsys, monkeypatch)
    assert code == 0, out
    assert "failed" not in out, out
    # The candidate, and its refit with the gate rows added when the gate approved it.
    trained = ModelRegistry(home).versions("surfaces")[1:]
    assert 1 <= len(trained) <= 2, out
    for version in trained:
        assert version.manifest["modality"] == "image" and version.manifest["rows"]["train"] > 30


def test_the_int8_backend_serves_a_calibrated_int8_model_or_the_float_one(
    image_home_template: Path, tmp_path: Path, surfaces: Path
) -> None:
    import shutil

    from service.predictor import load_model
    from training.onnx_files import read_export_record
    from training.registry import ModelRegistry

    home = tmp_path / "bentoml"
    shutil.copytree(image_home_template, home)
    version = ModelRegistry(home).get("surfaces:production")
    assert "int8" not in (read_export_record(version) or {})
    int8_model = load_model(version, "onnx-int8", "cpu", 1, 3)  # quantised at load: none was made
    int8 = (read_export_record(version) or {})["int8"]
    assert int8["method"].startswith("static") and int8["calibration_rows"] > 0
    assert int8_model.backend.name == ("onnx-int8" if int8["kept"] else "onnx")
    images = [p.read_bytes() for p in sorted(surfaces.rglob("*.png"))[:12]]
    float_labels = [p.label for p in load_model(version, "onnx", "cpu", 1, 3).classify(images)]
    agreed = np.mean([p.label == q for p, q in zip(int8_model.classify(images), float_labels, strict=True)])
    assert agreed >= (0.75 if int8["kept"] else 1.0)
