"""Refit's changes to BentoML's internals still apply to the installed BentoML, and can be undone.

These fail loudly when a BentoML upgrade removes or renames what service/bentoml_patches.py changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import bentoml
import pytest
from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

from service.bentoml_patches import (
    BENTOML_ERROR_LOGGER,
    BentoMLPatchError,
    ClientErrorFilter,
    log_client_errors_briefly,
    restore_cork_batching,
    use_greedy_batching,
    use_json_media_type,
)


@pytest.fixture
def greedy() -> Iterator[None]:
    """Greedy batching for one test; BentoML's own policy again afterwards."""
    use_greedy_batching()
    yield
    restore_cork_batching()


def learned_wait(batches_waited_s: float) -> float:
    """The optimizer's wait after 59 batches that each waited ``batches_waited_s`` behind a busy model."""
    optimizer = Optimizer(max_latency=1.0)
    for n in range(1, 60):
        optimizer.log_outbound(n=n, wait=batches_waited_s, duration=0.002 * n + 0.01)
    optimizer.trigger_refresh()
    assert optimizer.o_a == pytest.approx(0.002, rel=1e-3)  # the latency model is learned either way
    return float(optimizer.wait)


def test_bentoml_alone_learns_to_hold_requests_back() -> None:
    restore_cork_batching()  # an in-process service of another test may have patched it
    assert learned_wait(0.3) > 0.05  # what the greedy patch exists to undo


def test_greedy_batching_never_holds_a_request_back(greedy: None) -> None:
    use_greedy_batching()  # idempotent: patching twice must not stack
    assert learned_wait(0.3) == 0


def test_greedy_batching_can_be_undone() -> None:
    restore_cork_batching()
    controller, outbound_call = CorkDispatcher.controller, CorkDispatcher.outbound_call
    use_greedy_batching()
    assert CorkDispatcher.controller is not controller
    restore_cork_batching()
    assert learned_wait(0.3) > 0.05
    assert (CorkDispatcher.controller, CorkDispatcher.outbound_call) == (controller, outbound_call)


class GatedModel:
    """An async model that records each batch's size and, once ``gate`` is set, finishes a batch
    only when the gate is open."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(len(items))
        if self.gate is not None:
            await self.gate.wait()
        return list(items)


async def start_dispatcher(max_latency_ms: int) -> tuple[GatedModel, Callable[[str], Awaitable[Any]]]:
    """A CorkDispatcher as BentoML builds one for a batchable API, past its latency-model training
    (its first 11 batches: 12 requests are sent one at a time)."""
    dispatcher = CorkDispatcher(
        max_latency_in_ms=max_latency_ms,
        max_batch_size=64,
        fallback=lambda: "shed",
        get_batch_size=lambda _: 1,
    )
    model = GatedModel()
    call = dispatcher(model)
    for i in range(12):
        assert await call(f"train {i}") == f"train {i}"
    model.batches.clear()
    model.gate = asyncio.Event()
    return model, call


def test_greedy_batches_are_what_queued_while_the_model_was_busy(greedy: None) -> None:
    async def scenario() -> None:
        model, call = await start_dispatcher(max_latency_ms=5000)
        first = asyncio.ensure_future(call("a"))
        await asyncio.sleep(0.05)  # "a" is in the model
        queued = [asyncio.ensure_future(call(text)) for text in "bcd"]
        await asyncio.sleep(0.05)
        assert model.gate is not None
        model.gate.set()
        assert await asyncio.gather(first, *queued) == list("abcd")
        assert model.batches == [1, 3]

    asyncio.run(scenario())


def test_greedy_batching_waits_for_the_model_without_polling(
    greedy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BentoML's controller looks at its queue every millisecond while the model is busy (reading
    the clock each time); greedy batching looks when a request arrives or a batch ends."""
    clock_reads = 0
    clock = time.time

    def counted_time() -> float:
        nonlocal clock_reads
        clock_reads += 1
        return clock()

    async def scenario() -> None:
        model, call = await start_dispatcher(max_latency_ms=5000)
        monkeypatch.setattr(time, "time", counted_time)
        first = asyncio.ensure_future(call("a"))
        await asyncio.sleep(0.02)  # "a" is in the model
        reads_before = clock_reads
        second = asyncio.ensure_future(call("b"))
        await asyncio.sleep(0.3)  # "b" waits for the model
        reads_while_busy = clock_reads - reads_before
        assert model.gate is not None
        model.gate.set()
        assert await asyncio.gather(first, second) == ["a", "b"]
        assert model.batches == [1, 1]
        assert reads_while_busy < 20, f"the queue was looked at {reads_while_busy} times in 300 ms"

    asyncio.run(scenario())


def test_greedy_batching_sheds_a_request_the_moment_it_would_miss_max_latency(greedy: None) -> None:
    async def scenario() -> None:
        model, call = await start_dispatcher(max_latency_ms=100)
        first = asyncio.ensure_future(call("a"))
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        assert await asyncio.wait_for(call("b"), timeout=2) == "shed"  # BentoML answers 503
        assert time.perf_counter() - started < 1.0  # at its deadline, not when the model frees
        assert model.gate is not None
        model.gate.set()
        assert await first == "a"

    asyncio.run(scenario())


def test_a_changed_dispatcher_is_refused_with_what_was_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Optimizer, "log_outbound", lambda self, batch: None)
    with pytest.raises(
        BentoMLPatchError, match=r"expected Optimizer.log_outbound\(self, n, wait, duration\)"
    ):
        use_greedy_batching()


def test_a_changed_batch_call_is_refused_with_what_was_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    restore_cork_batching()

    async def outbound_call(self: Any, jobs: Any) -> None:
        return None

    monkeypatch.setattr(CorkDispatcher, "outbound_call", outbound_call)
    with pytest.raises(
        BentoMLPatchError, match=r"expected CorkDispatcher.outbound_call\(self, inputs_info, training\)"
    ):
        use_greedy_batching()


@bentoml.service
class Echo:
    """The smallest service with one API."""

    @bentoml.api
    def echo(self, text: str) -> dict[str, Any]:
        return {"text": text}


def test_the_json_media_type_is_fixed_on_the_output_spec() -> None:
    spec = Echo.apis["echo"].output_spec
    use_json_media_type(Echo, "echo")
    assert spec.media_type == "application/json" and spec.mime_type() == "application/json"


def test_an_api_without_an_output_spec_is_refused() -> None:
    with pytest.raises(BentoMLPatchError, match="'missing'"):
        use_json_media_type(Echo, "missing")


def test_the_refit_service_answers_with_the_fixed_media_type(service_class: Any) -> None:
    assert service_class.apis["classify"].output_spec.media_type == "application/json"


def log_rejected_request(error: Exception) -> None:
    """What BentoML does when a request fails: log_exception() inside the except block."""
    from bentoml._internal.server.http_app import log_exception
    from starlette.requests import Request

    request = Request({"type": "http", "method": "POST", "path": "/classify", "headers": []})
    try:
        raise error
    except Exception:
        log_exception(request)


def invalid_texts_error() -> Exception:
    from pydantic import BaseModel, ValidationError

    class Body(BaseModel):
        texts: list[int]

    try:
        Body(texts=["my card number is 4111 1111 1111 1111"])  # type: ignore[list-item]
    except ValidationError as exc:
        return exc
    raise AssertionError("the body validated")


@pytest.fixture
def brief_client_errors() -> Iterator[None]:
    """The filter for one test, removed afterwards."""
    import logging

    log_client_errors_briefly()
    log_client_errors_briefly()  # idempotent: one filter
    bentoml_logger = logging.getLogger(BENTOML_ERROR_LOGGER)
    assert sum(isinstance(f, ClientErrorFilter) for f in bentoml_logger.filters) == 1
    yield
    for f in [f for f in bentoml_logger.filters if isinstance(f, ClientErrorFilter)]:
        bentoml_logger.removeFilter(f)


def test_bentoml_alone_logs_a_client_error_with_its_input(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    # Without the filter an in-process service of another test may have installed.
    bentoml_logger = logging.getLogger(BENTOML_ERROR_LOGGER)
    monkeypatch.setattr(bentoml_logger, "filters", [])
    with caplog.at_level("INFO"):
        log_rejected_request(invalid_texts_error())
    assert caplog.records[-1].levelname == "ERROR" and "4111 1111" in caplog.text  # what the filter is for


def test_a_client_error_is_one_info_line_without_the_input(
    brief_client_errors: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        log_rejected_request(invalid_texts_error())
    [record] = [r for r in caplog.records if r.name == "bentoml._internal.server.http_app"]
    assert record.levelname == "INFO" and record.exc_info is None
    assert record.getMessage() == "POST /classify: 400 ValidationError (the input is not logged)"
    assert "4111" not in caplog.text


def test_a_server_error_keeps_its_traceback(
    brief_client_errors: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        log_rejected_request(RuntimeError("the model crashed"))
    assert caplog.records[-1].levelname == "ERROR" and "the model crashed" in caplog.text


def test_unknown_paths_get_one_metric_label_and_the_patch_can_be_undone() -> None:
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    from service.bentoml_patches import UNKNOWN_PATH, bound_metric_paths, metric_path, restore_metric_paths

    restore_metric_paths()  # a service app built earlier in this process may have patched it
    original = RunnerTrafficMetricsMiddleware.__call__
    try:
        bound_metric_paths({"/classify", "/model"}, prefixes=("/static_content/",))
        bound_metric_paths({"/feedback"})  # idempotent, and adds paths
        assert metric_path("/classify") == "/classify" and metric_path("/feedback") == "/feedback"
        assert metric_path("/static_content/a.css") == "/static_content/*"
        assert metric_path("/wp-login.php") == UNKNOWN_PATH
        assert RunnerTrafficMetricsMiddleware.__call__ is not original
    finally:
        restore_metric_paths()
    assert RunnerTrafficMetricsMiddleware.__call__ is original


def test_a_changed_metrics_middleware_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    from service.bentoml_patches import bound_metric_paths

    async def changed(self: Any, request: Any) -> None:
        return None

    monkeypatch.setattr(RunnerTrafficMetricsMiddleware, "__call__", changed)
    with pytest.raises(BentoMLPatchError, match=r"expected RunnerTrafficMetricsMiddleware.__call__"):
        bound_metric_paths({"/classify"})


def test_a_request_shed_under_load_is_one_info_line(
    brief_client_errors: None, caplog: pytest.LogCaptureFixture
) -> None:
    from bentoml.exceptions import ServiceUnavailable

    with caplog.at_level("INFO"):
        log_rejected_request(ServiceUnavailable("process is overloaded"))
    [record] = [r for r in caplog.records if r.name == "bentoml._internal.server.http_app"]
    assert record.levelname == "INFO" and record.exc_info is None
    assert record.getMessage() == "POST /classify: 503 ServiceUnavailable (the input is not logged)"


def test_bentoml_still_answers_a_shed_request_with_the_body_the_guard_rewrites() -> None:
    import inspect

    from _bentoml_impl.server.app import ServiceAppFactory

    from service.guard import SHED_BODY

    source = inspect.getsource(ServiceAppFactory)
    assert 'raise ServiceUnavailable("process is overloaded")' in source  # the dispatcher's fallback
    assert SHED_BODY.decode() in inspect.getsource(ServiceAppFactory.api_endpoint_wrapper)
