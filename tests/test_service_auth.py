"""API keys: created with `refit keys`, checked by the service per route scope, rate-limited, revocable."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.keys import KeyRing, create_key, read_keys
from tests.helpers import run_cli
from training.registry import ModelRegistry


def create_key_with_cli(
    home: Path, name: str, scopes: list[str], capsys: Any, monkeypatch: Any, *extra: str
) -> str:
    """`refit keys create NAME --scope ... --home HOME`; the token it prints."""
    args = ["keys", "create", name, *(a for s in scopes for a in ("--scope", s)), "--home", str(home), *extra]
    code, out = run_cli(args, capsys, monkeypatch)
    assert code == 0, out
    return out.split()[-1]


@pytest.fixture
def keys(
    served_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Tokens of three keys in the served registry: predict, predict + feedback, admin."""
    return {
        name: create_key_with_cli(served_home, name, scopes, capsys, monkeypatch)
        for name, scopes in {
            "app": ["predict"],
            "labeller": ["predict", "feedback"],
            "ops": ["admin"],
        }.items()
    }


@pytest.fixture
def keyed_client(keys: dict[str, str], client: Any) -> Iterator[Any]:
    """The in-process service over a registry that has API keys."""
    yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_keys_are_stored_as_digests_readable_by_the_owner_only(
    keys: dict[str, str], served_home: Path
) -> None:
    path = served_home / "refit" / "api-keys.json"
    text = path.read_text()
    assert all(token not in text for token in keys.values())
    assert [k.name for k in read_keys(path)] == ["app", "labeller", "ops"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    [
        ("post", "/classify", {"texts": ["reset my password"]}, {}),
        ("post", "/feedback", {"text": "reset my password", "label": "password"}, {}),
        ("get", "/model", None, {}),
        ("post", "/classify", {"texts": ["reset my password"]}, {"X-Model-Version": "candidate"}),
    ],
)
def test_every_route_that_reads_or_writes_needs_a_key(
    keyed_client: Any, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    for given in ({}, bearer("refit_not-a-key"), {"Authorization": "Basic dXNlcjpwYXNz"}):
        response = keyed_client.request(method.upper(), path, json=body, headers={**headers, **given})
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"] == (
            "Missing or invalid API key: expected the header 'Authorization: Bearer <key>'."
        )


def test_probes_metrics_and_docs_stay_open(keyed_client: Any) -> None:
    for path in ("/livez", "/readyz", "/metrics", "/docs.json"):
        assert keyed_client.get(path).status_code == 200, path


def test_each_route_needs_its_scope(keyed_client: Any, keys: dict[str, str], served_home: Path) -> None:
    app, labeller, ops = keys["app"], keys["labeller"], keys["ops"]
    classify = {"texts": ["reset my password"]}
    assert keyed_client.post("/classify", json=classify, headers=bearer(app)).status_code == 200
    assert keyed_client.get("/model", headers=bearer(app)).status_code == 200
    feedback = {"text": "reset my password", "label": "password"}
    refused = keyed_client.post("/feedback", json=feedback, headers=bearer(app))
    assert refused.status_code == 403
    assert refused.json()["error"] == (
        "API key 'app' lacks the scope 'feedback' that POST /feedback needs; it has: predict."
    )
    assert keyed_client.post("/feedback", json=feedback, headers=bearer(labeller)).status_code == 200
    candidate = ModelRegistry(served_home).get("tiny:candidate").version
    pinned = {**bearer(labeller), "X-Model-Version": candidate}
    refused = keyed_client.post("/classify", json=classify, headers=pinned)
    assert refused.status_code == 403 and "'pin' that POST /classify with X-Model-Version" in refused.text
    answer = keyed_client.post(
        "/classify", json=classify, headers={**bearer(ops), "X-Model-Version": candidate}
    )
    assert answer.status_code == 200 and answer.json()[0]["version"] == candidate  # admin may do all


def test_a_revoked_key_is_refused_without_a_restart(
    keyed_client: Any, keys: dict[str, str], served_home: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    classify = {"texts": ["reset my password"]}
    assert keyed_client.post("/classify", json=classify, headers=bearer(keys["app"])).status_code == 200
    code, out = run_cli(["keys", "revoke", "app", "--home", str(served_home)], capsys, monkeypatch)
    assert code == 0 and "revoked key 'app'" in out
    deadline = time.monotonic() + 5
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status = keyed_client.post("/classify", json=classify, headers=bearer(keys["app"])).status_code
        time.sleep(0.1)
    assert status == 401
    code, out = run_cli(["keys", "list", "--home", str(served_home)], capsys, monkeypatch)
    assert "labeller" in out and "ops" in out and " app " not in out


def test_a_key_over_its_rate_limit_gets_a_429_with_retry_after(
    served_home: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, client: Any
) -> None:
    token = create_key_with_cli(served_home, "batch", ["predict"], capsys, monkeypatch, "--rate", "2")
    time.sleep(1.1)  # the service reads the keys file again at most once a second
    statuses = [
        client.post("/classify", json={"texts": ["hi there"]}, headers=bearer(token)).status_code
        for _ in range(6)
    ]
    assert statuses[:2] == [200, 200] and 429 in statuses, statuses
    refused = client.post("/classify", json={"texts": ["hi there"]}, headers=bearer(token))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "over its limit of 2 requests/s" in refused.json()["error"]


def test_bad_key_requests_are_refused_with_what_was_expected(tmp_path: Path) -> None:
    from training.errors import ConfigError

    path = tmp_path / "keys.json"
    with pytest.raises(
        ConfigError, match=r"Expected scopes among predict, feedback, pin, admin; found \['write'\]"
    ):
        create_key(path, "x", ["write"])
    create_key(path, "x", ["predict"])
    with pytest.raises(ConfigError, match="A key named 'x' exists"):
        create_key(path, "x", ["predict"])
    with pytest.raises(ConfigError, match="other than '' and 'anonymous' \\(reserved\\); found 'anonymous'"):
        create_key(path, "anonymous", ["feedback"])  # the source name of keyless feedback
    path.write_text(json.dumps(["not", "keys"]))
    with pytest.raises(ConfigError, match="is not a Refit API keys file"):
        KeyRing(path)


def test_refit_serve_refuses_a_public_host_without_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = run_cli(["serve", "--host", "0.0.0.0", "--home", str(tmp_path)], capsys, monkeypatch)
    assert code == 2
    assert "Refusing to listen on 0.0.0.0 without API keys" in out and "--insecure" in out


def test_feedback_records_the_key_that_sent_it(
    keyed_client: Any, keys: dict[str, str], served_home: Path
) -> None:
    import sqlite3

    body = {"text": "where is my parcel", "label": "shipping"}
    assert keyed_client.post("/feedback", json=body, headers=bearer(keys["labeller"])).status_code == 200
    with sqlite3.connect(served_home / "refit" / "inference.db") as db:
        assert db.execute("SELECT text, label, source FROM feedback").fetchall() == [
            ("where is my parcel", "shipping", "labeller")
        ]
