"""Service parts on their own: the request guard, settings, pinned-version LRU, tokenisation."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.backends import encode_texts
from service.balance import ConnectionBalance
from service.call_pool import CallPool, split_batch
from service.guard import RequestGuard
from service.heap import freeze_heap
from service.model_holder import ModelHolder
from service.predictor import load_model
from service.settings import ServeSettings, load_serve_settings
from training.errors import ConfigError, VersionNotFoundError
from training.registry import ModelRegistry


async def slow_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that takes 0.2 s and answers 200, or 503 on /feedback."""
    await receive()
    await asyncio.sleep(0.2)
    status = 503 if scope["path"] == "/feedback" else 200
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": b"done"})


def test_overload_gets_a_503_with_retry_after_and_others_still_succeed() -> None:
    rejected: list[str] = []
    guard = RequestGuard(
        slow_app, max_body_bytes=2048, max_inflight=2, retry_after_s=3, on_reject=rejected.append
    )

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return list(
                await asyncio.gather(*[client.post("/classify", json={"texts": ["x"]}) for _ in range(5)])
            )

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503, 503, 503]
    shed = next(r for r in responses if r.status_code == 503)
    assert shed.headers["retry-after"] == "3" and "limit 2" in shed.json()["error"]
    assert rejected == ["overloaded"] * 3


def test_every_503_gets_retry_after_and_big_bodies_a_413() -> None:
    guard = RequestGuard(slow_app, max_body_bytes=2048, max_inflight=10, retry_after_s=1)

    async def calls() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            inner_503 = await client.post("/feedback", json={"label": "x"})
            too_big = await client.post("/classify", content=b"x" * 4096)
            other_path = await client.post("/other", content=b"x" * 4096)  # not guarded
            return inner_503, too_big, other_path

    inner_503, too_big, other_path = asyncio.run(calls())
    assert inner_503.status_code == 503 and inner_503.headers["retry-after"] == "1"
    assert too_big.status_code == 413 and "at most 2048 bytes" in too_big.json()["error"]
    assert other_path.status_code == 200


async def shedding_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers as BentoML does when its dispatcher sheds a request (ServiceUnavailable)."""
    await receive()
    body = b'{"error":"An unexpected error has occurred, please check the server log."}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_a_request_shed_by_the_batching_queue_is_told_why() -> None:
    rejected: list[str] = []
    guard = RequestGuard(shedding_app, retry_after_s=2, on_reject=rejected.append, max_latency_ms=750)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/classify", json={"texts": ["x"]})

    response = asyncio.run(call())
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    error = response.json()["error"]
    assert error.startswith("Overloaded: the batching queue cannot answer within max_latency_ms (750 ms)")
    assert int(response.headers["content-length"]) == len(response.content)
    assert rejected == ["overloaded"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_texts": 100, "max_batch_size": 64}, "must not exceed max_batch_size"),
        ({"backend": "tensorrt"}, "backend"),
        ({"batch": 3}, "Unknown config key(s) ['batch']"),
        ({"swap_poll_s": 30}, "swap_poll_s"),
    ],
)
def test_invalid_serve_settings_are_refused_with_the_reason(values: dict[str, Any], message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        load_serve_settings(overrides=values)


def test_serve_settings_read_a_file_under_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("model: support\nmax_latency_ms: 20\ntop_k: 2\n", encoding="utf-8")
    monkeypatch.setenv("REFIT_SERVE_CONFIG", str(path))
    monkeypatch.setenv("REFIT_SERVE_TOP_K", "5")
    settings = load_serve_settings()
    assert (settings.model, settings.max_latency_ms, settings.top_k) == ("support", 20, 5)
    assert settings.resolved_log_url.endswith("refit/inference.db")


def test_truncation_is_detected_per_text(tiny_base_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    encoded = encode_texts(tokenizer, ["reset my password", "parcel " * 30, "refund"], max_length=8)
    assert encoded.truncated.tolist() == [False, True, False]
    assert encoded.arrays["input_ids"].shape == (3, 8) and encoded.arrays["attention_mask"][0].sum() == 5


def test_a_saved_tokenizer_loads_as_auto_tokenizer_would(tiny_base_model: Path) -> None:
    from transformers import AutoTokenizer

    from training.processors import load_tokenizer

    texts = ["Reset MY password!", "", "parcel " * 30, "refund £5 €10 café 日本"]
    expected, loaded = AutoTokenizer.from_pretrained(tiny_base_model), load_tokenizer(str(tiny_base_model))
    assert type(loaded) is type(expected)
    for cut in (64, 4):
        a, b = encode_texts(expected, texts, cut), encode_texts(loaded, texts, cut)
        assert a.truncated.tolist() == b.truncated.tolist()
        assert all(np.array_equal(a.arrays[name], b.arrays[name]) for name in a.arrays)


def test_pinned_versions_load_lazily_into_a_small_lru(served_home: Path) -> None:
    registry = ModelRegistry(served_home)
    loads: list[str] = []

    def load(version: Any) -> Any:
        loads.append(version.version)
        return load_model(version, "torch", "cpu", 1, 3)

    holder = ModelHolder(registry, "tiny", load, pinned_cache_size=1)
    production = holder.load_production()
    versions = [v.version for v in registry.versions("tiny")]
    other = next(v for v in versions if v != production.version.version)
    assert holder.get(None) is production and holder.get(production.version.version) is production
    pinned = holder.get(other)
    assert holder.get(other) is pinned and holder.get("candidate") is pinned
    assert loads == [production.version.version, other]
    with pytest.raises(VersionNotFoundError):
        holder.get("no-such-version")


def test_promotion_is_followed_and_a_broken_version_keeps_the_old_one(served_home: Path) -> None:
    registry = ModelRegistry(served_home)
    failures: list[str] = []
    holder = ModelHolder(
        registry,
        "tiny",
        lambda v: load_model(v, "onnx", "cpu", 1, 3),
        on_swap_failure=lambda version, exc: failures.append(version),
    )
    first = holder.load_production().version.version
    candidate = registry.get("tiny:candidate")
    assert holder.check_for_promotion() is False
    (candidate.path / "labels.json").write_text("{broken", encoding="utf-8")
    registry.promote(candidate.tag)
    assert holder.check_for_promotion() is False and holder.current.version.version == first
    assert failures == [candidate.version]
    assert holder.check_for_promotion() is False and failures == [candidate.version]  # not retried
    registry.rollback("tiny")
    assert holder.check_for_promotion() is False and holder.current.version.version == first


def load_with_a_cycle(version: Any) -> Any:
    """A served model whose objects refer to each other, as hooks and wrappers can make them."""
    loaded = load_model(version, "onnx", "cpu", 1, 3)
    loaded.backend.served = loaded
    return loaded


def test_a_swapped_out_model_is_collected_once_the_holder_settles_the_frozen_heap(
    served_home: Path,
) -> None:
    registry = ModelRegistry(served_home)
    settled: list[float] = []
    holder = ModelHolder(
        registry, "tiny", load_with_a_cycle, on_settled=lambda: settled.append(freeze_heap())
    )
    try:
        old = weakref.ref(holder.load_production())
        freeze_heap()
        assert gc.get_freeze_count() > 0 and holder.settle() is False  # nothing let go yet
        registry.promote(registry.get("tiny:candidate").tag)
        assert holder.check_for_promotion() is True
        gc.collect()
        assert old() is not None  # a frozen cycle: ordinary collections skip it
        assert holder.settle() is True and len(settled) == 1
        assert old() is None and holder.settle() is False
    finally:
        gc.unfreeze()


@pytest.mark.skipif(sys.platform != "linux", reason="malloc_trim is glibc's")
def test_memory_freed_after_a_swap_goes_back_to_the_system() -> None:
    import psutil

    from service.heap import release_free_memory

    process = psutil.Process()
    blocks = [bytes(1000) + bytes([i % 256]) for i in range(150_000)]  # ~150 MB of malloc'd blocks
    last = blocks[-1]  # still alive, above the freed ones: glibc cannot simply shrink the heap
    del blocks
    freed = process.memory_info().rss
    assert release_free_memory() is True
    assert (freed - process.memory_info().rss) / 2**20 > 100, "the freed blocks stayed resident"
    assert last


def test_refit_serve_passes_its_options_to_the_server_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli import settings_environment

    path = tmp_path / "serve.toml"
    path.write_text('model = "support"\nmax_texts = 4\n', encoding="utf-8")
    overrides = {"port": 3100, "gpus": 2, "backend": "torch", "feedback_extra_labels": ["new"], "host": None}
    env = settings_environment(path, overrides)
    assert env["REFIT_SERVE_PORT"] == "3100" and "REFIT_SERVE_HOST" not in env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_serve_settings()  # what the `bentoml serve` child reads
    assert (settings.model, settings.max_texts, settings.port, settings.gpus) == ("support", 4, 3100, 2)
    assert settings.worker_count == 2
    assert settings.backend == "torch" and settings.feedback_extra_labels == ["new"]


@pytest.mark.parametrize(
    ("cores", "overrides", "expected"),
    [
        (2, {"device": "cpu"}, 2),  # one single-threaded worker per core
        (16, {"device": "cpu"}, 4),  # at most 4: each worker holds a copy of the model
        (1, {"device": "cpu"}, 1),
        (16, {"device": "cpu", "workers": 1}, 1),  # as configured
        (16, {"gpus": 2}, 2),  # one per GPU asked for
    ],
)
def test_worker_count_defaults(
    cores: int, overrides: dict[str, object], expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert load_serve_settings(overrides=overrides).worker_count == expected


def test_refit_serve_refuses_bad_options_before_starting_anything(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import run_cli

    code, out = run_cli(["serve", "--backend", "tensorrt"], capsys, monkeypatch)
    assert code == 2
    expected = "Input should be 'auto', 'torch', 'onnx' or 'onnx-int8' (found 'tensorrt')"
    assert f"backend [REFIT_SERVE_BACKEND]: {expected}" in out


@pytest.mark.slow  # child processes
def test_processes_creating_the_log_tables_together_all_succeed_quietly(tmp_path: Path) -> None:
    import multiprocessing

    from tests.log_tables_child import create_tables_in_child

    context = multiprocessing.get_context("spawn")
    processes = 4
    for attempt in range(3):  # the race is between two statements: give it several chances
        url = f"sqlite:///{tmp_path / f'race-{attempt}.db'}"
        start, results = context.Barrier(processes), context.Queue()
        children = [
            context.Process(target=create_tables_in_child, args=(url, start, results))
            for _ in range(processes)
        ]
        for child in children:
            child.start()
        outcomes = [results.get(timeout=120) for _ in children]
        for child in children:
            child.join(30)
        assert outcomes == [("ok", [])] * processes


def test_an_older_log_gains_the_feedback_source_column_and_keeps_its_rows(tmp_path: Path) -> None:
    import sqlite3

    from service.inference_log_db import create_log_engine, create_tables

    path = tmp_path / "inference.db"
    with sqlite3.connect(path) as db:  # a feedback table from before the source column
        db.execute(
            "CREATE TABLE feedback (id INTEGER PRIMARY KEY, request_id VARCHAR(32), "
            "created DATETIME NOT NULL, model VARCHAR(200) NOT NULL, text TEXT NOT NULL, "
            "label VARCHAR(200) NOT NULL, predicted_label VARCHAR(200), version VARCHAR(64))"
        )
        db.execute(
            "INSERT INTO feedback (created, model, text, label) "
            "VALUES ('2026-01-01 00:00:00', 'm', 'old', 'a')"
        )
    engine = create_log_engine(f"sqlite:///{path}")
    create_tables(engine)
    create_tables(engine)  # a second start finds the column there
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT text, label, source FROM feedback").fetchall() == [("old", "a", None)]


def test_the_visible_character_rule_is_the_unicode_categories_it_names() -> None:
    import re
    import unicodedata

    from service.schemas import INVISIBLE_CATEGORIES, VISIBLE_CHARACTER

    rule = re.compile(VISIBLE_CHARACTER)
    wrong = [
        hex(cp)
        for cp in range(0x10000)
        if cp < 0xD800 or cp > 0xDFFF  # lone surrogates are refused before this rule
        if (rule.match(chr(cp)) is None) != (unicodedata.category(chr(cp)) in INVISIBLE_CATEGORIES)
    ]
    assert not wrong, wrong[:20]


def test_parts_of_a_batch_cover_every_input_once_and_give_each_call_work() -> None:
    sizes = np.arange(20)[::-1] + 100  # within 10% of each other: one run, cut by chunk_size alone
    order = np.argsort(sizes, kind="stable")
    for calls, lengths in ((1, [7, 7, 6]), (2, [7, 7, 6]), (4, [5, 5, 5, 5])):
        parts = split_batch(sizes, chunk_size=8, calls=calls, max_padding=0.1)
        assert [len(p) for p in parts] == lengths
        assert np.array_equal(np.concatenate(parts), order)
    assert [len(p) for p in split_batch(sizes[:5], chunk_size=8, calls=2, max_padding=0.1)] == [3, 2]
    assert [len(p) for p in split_batch(sizes[:1], chunk_size=8, calls=2, max_padding=0.1)] == [1]
    assert split_batch(sizes[:0], chunk_size=8, calls=2, max_padding=0.1) == []


def test_a_batch_is_cut_where_padding_would_exceed_its_limit() -> None:
    sizes = np.array([10, 40, 11, 10, 12, 41, 10])  # tokens: short texts and two long ones
    parts = split_batch(sizes, chunk_size=8, calls=1, max_padding=0.1)
    assert [sorted(sizes[p].tolist()) for p in parts] == [[10, 10, 10, 11], [12], [40, 41]]
    for part in parts:
        assert len(part) * sizes[part].max() <= 1.1 * sizes[part].sum()
    # Without a limit (a GPU's default), the sorted batch is one call.
    assert [len(p) for p in split_batch(sizes, chunk_size=8, calls=1, max_padding=None)] == [7]
    # More calls than runs: the widest run is split, so that both calls have work.
    short = sizes[[0, 2, 3, 6]]
    assert [len(p) for p in split_batch(short, chunk_size=8, calls=2, max_padding=0.1)] == [2, 2]


def test_calls_side_by_side_answer_as_one_call_at_a_time(served_home: Path) -> None:
    model = load_model(ModelRegistry(served_home).get("tiny:production"), "onnx", "cpu", 1, 3)
    texts = [f"reset my password number {i} " * (1 + i % 5) for i in range(23)]
    pool = CallPool(2)
    try:
        together = model.classify(texts, pool)
    finally:
        pool.close()
    alone = model.classify(texts)
    assert [p.label for p in together] == [p.label for p in alone]
    assert np.allclose([p.probabilities for p in together], [p.probabilities for p in alone], atol=1e-6)


def test_texts_cut_by_padding_answer_as_each_text_alone(served_home: Path) -> None:
    model = load_model(ModelRegistry(served_home).get("tiny:production"), "onnx", "cpu", 1, 3)
    assert model.max_padding == 0.1  # the CPU default
    texts = [f"reset my password number {i} " * (1 + i % 5) for i in range(23)]
    batched = model.classify(texts)
    alone = [model.classify([text])[0] for text in texts]
    assert np.allclose([p.probabilities for p in batched], [p.probabilities for p in alone], atol=1e-5)


def test_encoded_rows_are_padded_only_to_their_longest() -> None:
    from service.backends import Encoded

    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    encoded = Encoded({"input_ids": mask * 7, "attention_mask": mask}, np.array([False, True, False]))
    assert encoded.sizes().tolist() == [2, 5, 3]
    part = encoded.take(np.array([2, 0]))
    assert part.arrays["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert part.arrays["input_ids"].shape == (2, 3)
    assert part.truncated.tolist() == [False, False]
    images = Encoded({"pixel_values": np.zeros((3, 3, 4, 4), np.float32)}, np.zeros(3, bool))
    assert images.sizes().tolist() == [1, 1, 1]
    assert images.take(np.array([1])).arrays["pixel_values"].shape == (1, 3, 4, 4)


def test_a_cpu_worker_runs_its_share_of_the_cores_as_calls_and_a_gpu_worker_one() -> None:
    cores = os.cpu_count() or 1
    settings = load_serve_settings(resolve_model=False)
    assert settings.model_call_count("cpu") == max(1, cores // settings.worker_count)
    assert settings.model_call_count("cpu") * settings.worker_count <= max(cores, settings.worker_count)
    assert ServeSettings(device="cpu", workers=1).model_call_count("cpu") == cores  # alone: every core
    assert ServeSettings(device="cpu", workers=cores + 1).model_call_count("cpu") == 1
    assert settings.model_call_count("cuda:0") == 1
    assert ServeSettings(model_calls=3).model_call_count("cuda:0") == 3


def test_a_worker_over_its_share_of_connections_closes_them_until_the_shares_are_even(
    tmp_path: Path,
) -> None:
    now = [100.0]
    shared = tmp_path / "connections"
    workers = [ConnectionBalance(shared, i, 2, clock=lambda: now[0]) for i in range(2)]
    held = {("127.0.0.1", port): 0 for port in range(8)}  # every connection accepted by worker 0
    closed = 0
    for _ in range(40):  # rounds of one request per connection, 0.1 s apart
        now[0] += 0.1
        workers[1].publish()  # its publishing thread: idle, but alive
        for client, worker in list(held.items()):
            if workers[worker].should_close(client):
                closed += 1
                held[client] = 1 - worker  # the client's next connection: the other worker's
    shares = sorted(sum(1 for w in held.values() if w == i) for i in range(2))
    assert shares in ([3, 5], [4, 4]), shares
    assert closed == shares[0]  # nothing closed once even


def test_a_worker_that_stopped_publishing_has_no_share(tmp_path: Path) -> None:
    now = [100.0]
    shared = tmp_path / "connections"
    alive, _ = (ConnectionBalance(shared, i, 2, clock=lambda: now[0]) for i in range(2))
    now[0] += 0.5  # both published lately: the third connection is over a share of 1.5 + 1
    assert [alive.should_close(("127.0.0.1", port)) for port in range(4)] == [False, False, True, False]
    now[0] += 2  # the other worker published nothing for 2 s: all four are this one's share
    assert not any(alive.should_close(("127.0.0.1", port)) for port in range(4))


def test_the_balance_needs_two_workers_of_a_running_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert ConnectionBalance.for_this_worker(2) is None
    with pytest.raises(ValueError, match="worker 2 of 2"):
        ConnectionBalance(Path("unused"), 2, 2)


def logged_prediction(text: str) -> list[dict[str, Any]]:
    """The log record of one text's prediction, as a worker queues it."""
    from service.inference_log import prediction_records
    from service.predictor import Prediction

    prediction = Prediction(
        request_id=uuid.uuid4().hex,
        label="refund",
        confidence=0.9,
        top_k=[],
        probabilities=np.array([0.9, 0.1], dtype=np.float32),
        truncated=False,
        model="support",
        version="v1",
    )
    return prediction_records([prediction], [text], latency_ms=5.0)


def test_the_log_writer_writes_a_flush_interval_of_requests_at_once(tmp_path: Path) -> None:
    """Requests arriving one by one are written together, not one transaction (and one wake-up
    of the writer thread) per request; flush() writes at once what is queued."""
    from service.inference_log import InferenceLog

    writes: list[int] = []
    log = InferenceLog(f"sqlite:///{tmp_path / 'inference.db'}", flush_ms=1000, on_written=writes.append)
    log.start()
    try:
        log.submit(logged_prediction("warm up"))
        assert log.flush(timeout=5)
        writes.clear()
        for i in range(20):
            log.submit(logged_prediction(f"request {i}"))
            time.sleep(0.005)
        started = time.monotonic()
        assert log.flush(timeout=5)
        assert time.monotonic() - started < 0.5  # asked, not at the end of the flush interval
        assert writes == [20]
    finally:
        log.close()
