"""The service in-process (BentoML's to_asgi + TestClient) on the tiny fixture model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from tests.helpers import metric_value, run_cli, wait_for_logged_predictions
from training.registry import ModelRegistry


def read_rows(home: Path, table: str) -> list[dict[str, Any]]:
    engine = create_engine(f"sqlite:///{home / 'refit' / 'inference.db'}")
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]
    engine.dispose()
    return rows


def test_classify_answers_each_text_with_label_top_k_request_id_and_version(
    client: Any, served_home: Path
) -> None:
    production = ModelRegistry(served_home).get("tiny:production")
    texts = ["reset my password", "where is my parcel", "refund my payment please"]
    response = client.post("/classify", json={"texts": texts})
    assert response.status_code == 200
    body = response.json()
    assert [r["label"] for r in body] == ["password", "shipping", "refund"]
    for item in body:
        assert item["model"] == "tiny" and item["version"] == production.version
        assert len(item["request_id"]) == 32 and item["truncated"] is False
        probabilities = [k["probability"] for k in item["top_k"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert item["top_k"][0]["label"] == item["label"] and item["confidence"] == pytest.approx(
            probabilities[0]
        )
    assert len({item["request_id"] for item in body}) == 3


def test_a_text_longer_than_the_model_maximum_is_truncated_and_says_so(client: Any) -> None:
    long_text = " ".join(["parcel delivery late"] * 10)  # 30 words; the model reads 16 tokens
    body = client.post("/classify", json={"texts": [long_text, "reset my password"]}).json()
    assert [item["truncated"] for item in body] == [True, False]
    assert body[0]["label"] == "shipping"


BAD_INPUTS = [
    ("invalid json", {"content": b'{"texts": ['}, 400, "Invalid JSON"),
    ("not an object", {"json": ["reset my password"]}, 400, "found an array (send it as the value of"),
    ("missing field", {"json": {"text": "hi"}}, 400, "found the keys ['text'] (one text goes in a list"),
    ("other keys", {"json": {"inputs": ["hi"]}}, 400, "...]}; found the keys ['inputs']"),
    ("a number", {"json": 7}, 400, "...]}; found 7"),
    ("empty body", {"content": b""}, 400, "...]}; found an empty body"),
    ("images", {"json": {"images": ["aGk="]}}, 400, "found the keys ['images'] (this model classifies texts"),
    ("wrong type", {"json": {"texts": "reset my password"}}, 400, "holding one string, not a list"),
    ("wrong item type", {"json": {"texts": ["ok", 7]}}, 400, "valid string"),
    ("empty list", {"json": {"texts": []}}, 400, "at least 1 item"),
    ("empty text", {"json": {"texts": [""]}}, 400, "at least one visible character"),
    ("blank text", {"json": {"texts": ["ok", " \t\n"]}}, 400, "at least one visible character"),
    ("too many texts", {"json": {"texts": ["a"] * 9}}, 400, "at most 8 items"),
    ("text too long", {"json": {"texts": ["a" * 301]}}, 400, "at most 300 characters, found 301"),
    ("body too large", {"json": {"texts": ["a" * 25_000]}}, 413, "at most 20000 bytes"),
    # Half a surrogate pair: BentoML's JSON parser refuses it (the pinned route and /feedback
    # parse with json.loads, which accepts it, and then refuse the text).
    ("lone surrogate", {"content": b'{"texts": ["refund \\ud800 please"]}'}, 400, "Invalid JSON"),
    ("zero-width text", {"json": {"texts": ["\u200b\u200d\ufeff"]}}, 400, "at least one visible"),
]


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_a_4xx_that_says_what_was_expected(
    client: Any, case: str, request_kwargs: dict[str, Any], status: int, message: str
) -> None:
    headers = {"content-type": "application/json"}
    response = client.post("/classify", headers=headers, **request_kwargs)
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json())
    # The service is unharmed: the next good request succeeds.
    assert client.post("/classify", json={"texts": ["reset my password"]}).status_code == 200


def test_pinned_version_answers_and_unknown_version_is_a_404(client: Any, served_home: Path) -> None:
    candidate = ModelRegistry(served_home).get("tiny:candidate")
    pinned = client.post(
        "/classify", json={"texts": ["reset my password"]}, headers={"X-Model-Version": candidate.version}
    )
    assert pinned.status_code == 200
    assert pinned.json()[0]["version"] == candidate.version
    by_stage = client.post(
        "/classify", json={"texts": ["track my parcel"]}, headers={"X-Model-Version": "candidate"}
    )
    assert by_stage.json()[0]["version"] == candidate.version
    missing = client.post("/classify", json={"texts": ["hi"]}, headers={"X-Model-Version": "nope"})
    assert missing.status_code == 404
    assert candidate.version in missing.json()["versions"]
    bad = client.post("/classify", json={"texts": [""]}, headers={"X-Model-Version": candidate.version})
    assert bad.status_code == 400 and "at least one visible character" in bad.text


def test_model_endpoint_describes_the_serving_version(client: Any, served_home: Path) -> None:
    production = ModelRegistry(served_home).get("tiny:production")
    info = client.get("/model").json()
    assert info["name"] == "tiny" and info["version"] == production.version and info["stage"] == "production"
    assert info["labels"] == ["password", "refund", "shipping"]
    assert info["backend"] == "onnx" and info["device"] == "cpu"
    assert info["metrics"]["test"]["accuracy"] == pytest.approx(
        production.manifest and info["metrics"]["test"]["accuracy"]
    )
    assert info["lineage"]["strategy"] == "head" and info["lineage"]["data_fingerprint"]


def test_readiness_liveness_and_metrics(client: Any) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200
    client.post("/classify", json={"texts": ["reset my password", "refund my payment"]})
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "refit_predictions_total") >= 2
    assert 'refit_model_info{backend="onnx",device="cpu",model="tiny"' in metrics
    for name in (
        "refit_prediction_confidence_count",
        "refit_input_length_chars_count",
        "refit_batch_texts_count",
    ):
        assert metric_value(metrics, name) >= 1, name
    assert "bentoml_service_adaptive_batch_size" in metrics


def test_predictions_are_logged_with_probabilities_in_a_wal_sqlite_file(
    client: Any, served_home: Path
) -> None:
    body = client.post("/classify", json={"texts": ["reset my password", "track my parcel"]}).json()
    client.get("/model")  # any request; the writer flushes within log_flush_ms
    ids = {item["request_id"] for item in body}
    rows: list[dict[str, Any]] = []
    for _ in range(100):
        rows = [r for r in read_rows(served_home, "predictions") if r["request_id"] in ids]
        if len(rows) == 2:
            break
        time.sleep(0.05)
    assert len(rows) == 2
    row = next(r for r in rows if r["text"] == "reset my password")
    assert row["label"] == "password" and row["model"] == "tiny" and row["latency_ms"] > 0
    assert np.isclose(sum(json.loads(row["probabilities"])), 1.0, atol=1e-4)
    engine = create_engine(f"sqlite:///{served_home / 'refit' / 'inference.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()


def test_feedback_by_request_id_or_text_is_stored_before_it_is_acknowledged(
    client: Any, served_home: Path
) -> None:
    prediction = client.post("/classify", json={"texts": ["charged twice refund"]}).json()[0]
    by_id = client.post("/feedback", json={"request_id": prediction["request_id"], "label": "refund"})
    assert by_id.status_code == 200 and by_id.json()["stored"] is True
    by_text = client.post("/feedback", json={"text": "my parcel is lost", "label": "shipping"})
    assert by_text.status_code == 200
    rows = read_rows(served_home, "feedback")  # acknowledged means committed: no waiting here
    assert [(r["text"], r["label"], r["predicted_label"]) for r in rows] == [
        ("charged twice refund", "refund", prediction["label"]),
        ("my parcel is lost", "shipping", None),
    ]
    assert rows[0]["version"] == prediction["version"]


@pytest.mark.parametrize("path", ["/classify", "/feedback"])
@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data; boundary=x", "text/plain", "application/xml", "application/x-www-form-urlencoded"],
)
def test_a_body_that_is_not_json_gets_a_415(client: Any, path: str, content_type: str) -> None:
    body = b'--x\r\nContent-Disposition: form-data; name="texts"\r\n\r\nhi\r\n--x--\r\n'
    response = client.post(path, content=body, headers={"content-type": content_type})
    assert response.status_code == 415, response.text
    media_type = content_type.split(";")[0]
    assert (
        response.json()["error"]
        == f"Unsupported Content-Type: expected application/json, found {media_type}."
    )


def test_a_pinned_request_with_a_lone_surrogate_gets_a_400(client: Any, served_home: Path) -> None:
    candidate = ModelRegistry(served_home).get("tiny:candidate")
    response = client.post(
        "/classify",
        content=b'{"texts": ["refund \\ud800 please"]}',
        headers={"content-type": "application/json", "X-Model-Version": candidate.version},
    )
    assert response.status_code == 400 and "lone surrogate" in response.text, response.text


FEEDBACK_ERRORS = [
    (
        {"text": "hi", "label": "cancel_order"},
        422,
        "Unknown label 'cancel_order': expected one of the 3 labels in 'allowed_labels'. For a new "
        "label, run `refit models add-label tiny cancel_order` (no restart needed) or set "
        "REFIT_SERVE_FEEDBACK_EXTRA_LABELS.",
    ),
    ({"text": "hi", "label": 7}, 422, "Unknown label '7': expected one of the 3 labels"),
    ({"text": "hi", "label": "Refund"}, 422, "Unknown label 'Refund': did you mean 'refund'?"),
    ({"text": "hi", "label": True}, 400, "label: Input should be a valid string"),
    ({"text": "hi", "label": 2.5}, 400, "label: Input should be a valid string"),
    ({"request_id": "0" * 32, "label": "refund"}, 404, "Unknown request_id"),
    ({"label": "refund"}, 400, "expected a request_id or a non-blank text"),
    ({"text": "hi"}, 400, "Field required"),
    ({"text": "hi", "label": "refund", "extra": 1}, 400, "Extra inputs are not permitted"),
    ({"text": "refund \ud800 please", "label": "refund"}, 400, "lone surrogate '\\ud800' at position 7"),
    ({"text": "hi", "label": "refund\udfff"}, 400, "label: Input should be a valid string, unable to parse"),
    ({"request_id": "\ud800", "label": "refund"}, 400, "request_id: Input should be a valid string"),
    ({"text": "\u200b\u200b", "label": "refund"}, 400, "at least one visible character"),
    ({"text": "a" * 301, "label": "refund"}, 400, "at most 300 characters, found 301"),
]


@pytest.mark.parametrize(("body", "status", "message"), FEEDBACK_ERRORS)
def test_bad_feedback_gets_a_4xx_and_stores_nothing(
    client: Any, served_home: Path, body: dict[str, Any], status: int, message: str
) -> None:
    # json.dumps escapes lone surrogates (\\ud800), as a client's JSON encoder may.
    content = json.dumps(body).encode()
    response = client.post("/feedback", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    if status == 422:
        assert response.json()["allowed_labels"] == ["password", "refund", "shipping"]
    assert read_rows(served_home, "feedback") == []


def test_feedback_accepts_configured_new_labels(
    service_app: Any, serve_env: dict[str, str], served_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    monkeypatch.setenv("REFIT_SERVE_FEEDBACK_EXTRA_LABELS", "cancel_order, upgrade, 3")
    with TestClient(service_app) as client:
        for label in ("cancel_order", "upgrade", 3):  # a JSON number stands for its digits
            assert client.post("/feedback", json={"text": "cancel it", "label": label}).status_code == 200
    assert [r["label"] for r in read_rows(served_home, "feedback")] == [
        "cancel_order",
        "upgrade",
        "3",
    ]


def test_a_label_added_with_the_cli_is_accepted_without_a_restart(
    client: Any, served_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {"text": "I want to close my account", "label": "close_account"}
    assert client.post("/feedback", json=body).status_code == 422
    code, out = run_cli(
        ["models", "add-label", "tiny", "close_account", "--home", str(served_home)], capsys, monkeypatch
    )
    assert code == 0 and "close_account" in out
    assert client.post("/feedback", json=body).status_code == 200
    # Another spelling of a label the model has (or was given) would split its feedback in two.
    for variant, same in (("Close-Account", "close_account"), ("Password", "password")):
        code, out = run_cli(
            ["models", "add-label", "tiny", variant, "--home", str(served_home)], capsys, monkeypatch
        )
        assert code == 2 and f"Refusing to add {variant!r}: it is {same!r} written another way" in out, out
    assert (
        "close_account"
        in client.post("/feedback", json={"text": "x", "label": "nope"}).json()["allowed_labels"]
    )


def test_feedback_by_request_id_is_a_503_while_the_log_store_is_locked(
    client: Any, served_home: Path
) -> None:
    import sqlite3

    # Another process holds the write lock: the prediction cannot be written while it does.
    lock = sqlite3.connect(served_home / "refit" / "inference.db", isolation_level=None, timeout=1)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        answer = client.post("/classify", json={"texts": ["reset my password"]}).json()[0]
        body = {"request_id": answer["request_id"], "label": "password"}
        response = client.post("/feedback", json=body)
    finally:
        lock.rollback()
        lock.close()
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "Feedback not stored: the inference log is not taking writes now"


def test_predictions_succeed_while_the_log_store_is_down(
    service_app: Any, serve_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    # A directory is not a database file: every connection to this "store" fails.
    monkeypatch.setenv("REFIT_SERVE_LOG_URL", f"sqlite:///{tmp_path}")
    with TestClient(service_app) as client:
        for _ in range(3):
            response = client.post("/classify", json={"texts": ["reset my password", "track my parcel"]})
            assert response.status_code == 200 and response.json()[0]["label"] == "password"
        feedback = client.post("/feedback", json={"text": "reset my password", "label": "password"})
        assert feedback.status_code == 503 and "not stored" in feedback.json()["error"]
        for _ in range(100):
            if client.get("/model").json()["log"]["dropped"] >= 6:
                break
            time.sleep(0.05)
        assert client.get("/model").json()["log"]["dropped"] == 6


def test_torch_and_onnx_backends_give_the_same_answers(
    service_class: Any, serve_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from tests.helpers import build_service_app

    texts = ["reset my password", "where is my parcel now", "refund", "hello the new unknown"]
    answers = {}
    for backend in ("torch", "onnx"):
        monkeypatch.setenv("REFIT_SERVE_BACKEND", backend)
        with TestClient(build_service_app(service_class)) as client:
            assert client.get("/model").json()["backend"] == backend
            answers[backend] = client.post("/classify", json={"texts": texts}).json()
    for a, b in zip(answers["torch"], answers["onnx"], strict=True):
        assert a["label"] == b["label"]
        for x, y in zip(a["top_k"], b["top_k"], strict=True):
            assert x["probability"] == pytest.approx(y["probability"], abs=1e-4)


def test_a_pinned_version_without_an_export_loads_in_the_background_behind_a_503(
    service_app: Any, serve_env: dict[str, str], served_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import time

    from starlette.testclient import TestClient

    candidate = ModelRegistry(served_home).get("tiny:candidate")
    shutil.rmtree(candidate.path / "onnx")
    monkeypatch.setenv("REFIT_SERVE_PINNED_LOAD_WAIT_S", "0")
    monkeypatch.setenv("REFIT_SERVE_FREEZE_HEAP", "false")
    headers = {"X-Model-Version": candidate.version}
    with TestClient(service_app) as client:
        first = client.post("/classify", json={"texts": ["reset my password"]}, headers=headers)
        assert first.status_code == 503, first.text
        assert f"Version tiny:{candidate.version} is loading" in first.json()["error"]
        assert int(first.headers["Retry-After"]) >= 1
        assert client.post("/classify", json={"texts": ["hi"]}).status_code == 200  # production unaffected
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            answer = client.post("/classify", json={"texts": ["reset my password"]}, headers=headers)
            if answer.status_code == 200:
                break
            assert answer.status_code == 503
            time.sleep(0.2)
        assert answer.status_code == 200 and answer.json()[0]["version"] == candidate.version
    # A pinned load never writes into the registry: the version without an export ran on torch.
    assert not (candidate.path / "onnx").exists()


def test_unknown_paths_share_one_metric_label_and_known_ones_keep_theirs(client: Any) -> None:
    for i in range(30):
        assert client.get(f"/scan-{i}.php").status_code == 404
        assert client.post(f"/admin/{i}", json={}).status_code in (404, 405)
    assert client.get("/static_content/index.css").status_code == 200
    assert client.get("/model").status_code == 200
    metrics = client.get("/metrics").text
    endpoints = {
        line.split('endpoint="')[1].split('"')[0] for line in metrics.splitlines() if 'endpoint="' in line
    }
    assert not any("scan-" in e or "/admin/" in e for e in endpoints), endpoints
    assert {"/{unknown}", "/static_content/*", "/model"} <= endpoints, endpoints
    from service.app import SERVED_PATHS

    documented = set(client.get("/docs.json").json()["paths"])
    assert documented <= set(SERVED_PATHS), documented - set(SERVED_PATHS)


def test_only_production_candidates_and_allowed_versions_can_be_pinned(
    client: Any, served_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(served_home)
    candidate = registry.get("tiny:candidate")
    registry.archive(candidate.tag, reason="test: the gate rejected it")
    headers = {"X-Model-Version": candidate.version}
    refused = client.post("/classify", json={"texts": ["reset my password"]}, headers=headers)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == (
        f"Version {candidate.tag} is archived: requests may pin production, candidate versions, or a "
        f"version an admin allowed with `refit models allow-pin {candidate.tag}`."
    )
    code, out = run_cli(
        ["models", "allow-pin", candidate.tag, "--home", str(served_home)], capsys, monkeypatch
    )
    assert code == 0 and f"requests may now pin {candidate.tag} (archived)" in out
    answer = client.post("/classify", json={"texts": ["reset my password"]}, headers=headers)
    assert answer.status_code == 200 and answer.json()[0]["version"] == candidate.version


def test_a_log_file_removed_under_the_service_is_opened_again(client: Any, served_home: Path) -> None:
    import sqlite3

    database = served_home / "refit" / "inference.db"
    assert client.post("/classify", json={"texts": ["reset my password"]}).status_code == 200
    assert (
        client.post("/feedback", json={"text": "reset my password", "label": "password"}).status_code == 200
    )
    wait_for_logged_predictions(served_home, 1)  # written before the removal, not after it
    for path in database.parent.glob("inference.db*"):  # deleted by an operator or a clean-up job
        path.unlink()
    feedback = client.post("/feedback", json={"text": "track my parcel", "label": "shipping"})
    assert feedback.status_code == 200, feedback.text
    answer = client.post("/classify", json={"texts": ["where is my parcel"]}).json()[0]
    deadline = time.monotonic() + 10
    rows: list[Any] = []
    while not rows and time.monotonic() < deadline:
        time.sleep(0.1)
        with sqlite3.connect(database) as db:
            rows = db.execute("SELECT request_id FROM predictions").fetchall()
    assert rows == [(answer["request_id"],)]  # the new file has what came after the removal
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT text FROM feedback").fetchall() == [("track my parcel",)]
    assert metric_value(client.get("/metrics").text, "refit_payload_log_reopened_total") == 1


def test_a_worker_that_cannot_load_production_serves_the_previous_one_and_says_so(
    service_app: Any, serve_env: dict[str, str], served_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    registry = ModelRegistry(served_home)
    before = registry.get("tiny:production")
    production = registry.promote(registry.get("tiny:candidate").tag, reason="test: v2 ships")
    for path in (production.path / "onnx").glob("model.onnx"):  # damaged on disk after its promotion
        path.write_bytes(path.read_bytes()[:100])
    (production.path / "model" / "model.safetensors").write_bytes(b"damaged")
    monkeypatch.setenv("REFIT_SERVE_FREEZE_HEAP", "false")
    with TestClient(service_app) as client:  # starts instead of failing again and again
        info = client.get("/model").json()
        assert info["version"] == before.version and info["production"] == production.version
        assert f"production {production.tag} cannot be loaded" in info["degraded"]
        answer = client.post("/classify", json={"texts": ["reset my password"]})
        assert answer.status_code == 200 and answer.json()[0]["version"] == before.version
        assert metric_value(client.get("/metrics").text, "refit_degraded") == 1
        ready = client.get("/readyz")  # ready (2xx) but distinct from a healthy worker's 200
        assert ready.status_code == 203 and ready.json()["status"] == "degraded", ready.text
        assert f"serving {before.tag}" in ready.json()["reason"]
        registry.rollback("tiny", reason="test: back to what serves")
        deadline = time.monotonic() + 10
        while client.get("/model").json()["degraded"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/model").json()["degraded"] is None
        assert metric_value(client.get("/metrics").text, "refit_degraded") == 0
        assert client.get("/readyz").status_code == 200


def test_a_running_worker_that_cannot_swap_to_production_says_it_is_degraded(
    client: Any, served_home: Path
) -> None:
    registry = ModelRegistry(served_home)
    before = registry.get("tiny:production")
    candidate = registry.get("tiny:candidate")
    for path in (candidate.path / "onnx").glob("model.onnx"):
        path.write_bytes(path.read_bytes()[:100])
    (candidate.path / "model" / "model.safetensors").write_bytes(b"damaged")
    registry.promote(candidate.tag, reason="test: promoted unchecked, then found damaged")
    deadline = time.monotonic() + 10
    while client.get("/readyz").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    ready = client.get("/readyz")
    assert ready.status_code == 203, ready.text
    assert f"production {candidate.tag} cannot be loaded" in ready.json()["reason"]
    info = client.get("/model").json()
    assert info["version"] == before.version and info["production"] == candidate.version
    assert info["degraded"] == ready.json()["reason"]
    assert (
        client.post("/classify", json={"texts": ["track my parcel"]}).json()[0]["version"] == before.version
    )


def test_the_openapi_document_lists_the_error_statuses_and_hides_the_internal_route(client: Any) -> None:
    paths = client.get("/docs.json").json()["paths"]
    assert "/classify_pinned" not in paths
    feedback = paths["/feedback"]["post"]["responses"]
    assert {"200", "400", "401", "403", "404", "413", "415", "422", "429", "503"} <= set(feedback)
    assert {"401", "403", "429"} <= set(paths["/model"]["get"]["responses"])
    classify = paths["/classify"]["post"]
    assert {"200", "400", "401", "403", "404", "413", "415", "429", "503"} <= set(classify["responses"])
    assert classify["requestBody"]["required"] is True
    assert [p["name"] for p in classify["parameters"]] == ["X-Model-Version"]


def test_what_schemathesis_found_is_answered_as_documented(client: Any) -> None:
    document = client.get("/docs.json").json()
    body = document["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    text = body["properties"]["texts"]["items"]
    schemas = document["components"]["schemas"]
    assert text["minLength"] == 1 and text["maxLength"] == 300 and text["pattern"].startswith("[^")
    assert "type" not in schemas["InvalidArgument"]["properties"]["detail"]  # a list or a message
    # An empty X-Model-Version means production, batched.
    answer = client.post("/classify", json={"texts": ["reset my password"]}, headers={"X-Model-Version": ""})
    assert answer.status_code == 200 and answer.json()[0]["label"] == "password"
    # A body that does not parse gets the same {"error": ...} shape as every other 400.
    broken = client.post("/feedback", content=b"\xff", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "do not parse as JSON" in broken.json()["error"], broken.text


def test_a_gpu_worker_gives_numpy_blas_its_share_of_the_cores() -> None:
    # In a process of its own, as a worker is: threadpoolctl lets the first thread that sets a
    # limit own it, and this test's thread would then own the limits of the tests after it.
    script = (
        "from threadpoolctl import threadpool_info\n"
        "from service.backends import limit_numpy_threads\n"
        "def blas():\n"
        "    return sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'})\n"
        "limit_numpy_threads(3, 'cuda:0'); print(blas())\n"
        "limit_numpy_threads(3, 'cpu'); print(blas())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The model runs on the GPU, so the cores are free for the distances; on CPU they are not.
    assert done.stdout.split("\n")[:2] == ["[3]", "[1]"], done.stdout


def test_a_cpu_worker_gives_numpy_blas_one_thread_whatever_the_model_calls_get(
    service_app: Any, serve_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # BLAS threads spinning beside a 2-thread model call halved a worker's texts/s.
    from starlette.testclient import TestClient
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    before = blas_threads()
    monkeypatch.setenv("REFIT_SERVE_FREEZE_HEAP", "false")
    monkeypatch.setenv("REFIT_SERVE_THREADS", "2")
    try:
        with TestClient(service_app) as client:
            assert client.post("/classify", json={"texts": ["reset my password"]}).status_code == 200
            assert blas_threads() == {1}
    finally:
        threadpool_limits(limits=max(before), user_api="blas")
