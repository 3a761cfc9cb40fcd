"""Refit's changes to BentoML's internals still apply to the installed BentoML, and can be undone.

These fail loudly when a BentoML upgrade removes or renames what service/bentoml_patches.py changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import bentoml
import pytest
from bentoml._internal.marshal.dispatcher import Optimizer

from service.bentoml_patches import (
    BentoMLPatchError,
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
    assert learned_wait(0.3) > 0.05  # what the greedy patch exists to undo


def test_greedy_batching_never_holds_a_request_back(greedy: None) -> None:
    use_greedy_batching()  # idempotent: patching twice must not stack
    assert learned_wait(0.3) == 0


def test_greedy_batching_can_be_undone() -> None:
    use_greedy_batching()
    restore_cork_batching()
    assert learned_wait(0.3) > 0.05


def test_a_changed_dispatcher_is_refused_with_what_was_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Optimizer, "log_outbound", lambda self, batch: None)
    with pytest.raises(
        BentoMLPatchError, match=r"expected Optimizer.log_outbound\(self, n, wait, duration\)"
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
