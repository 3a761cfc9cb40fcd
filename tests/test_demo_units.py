"""The demo's pieces that need no model: its working directory and the replay client's accounting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.demo import MARKER, prepare_directory
from monitoring.replay import choose_feedback, replay
from service.process import free_port


def test_a_demo_directory_is_emptied_and_marked(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    (out / "bentoml").mkdir(parents=True)
    (out / "summary.json").write_text("{}")
    prepare_directory(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    (out / "logs").mkdir()
    prepare_directory(out)  # marked: emptied again
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_a_foreign_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(SystemExit, match="not made by `refit demo`"):
        prepare_directory(tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_replay_counts_every_request_that_gets_no_answer() -> None:
    rows = pd.DataFrame({"text": [f"text {i}" for i in range(12)], "label": ["a"] * 12})
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    stats = replay(url, rows, np.zeros(12, dtype=bool), rate=200.0, concurrency=3)
    assert stats.sent == 12 and stats.failed == 12 and not stats.versions
    assert "ConnectError" in stats.failures[0]


def test_replay_stops_when_told_even_when_repeating() -> None:
    rows = pd.DataFrame({"text": ["x"], "label": ["a"]})
    url = f"http://127.0.0.1:{free_port()}"
    sent: list[int] = []
    stats = replay(
        url, rows, np.zeros(1, dtype=bool), rate=500.0, concurrency=2,
        on_row=lambda: sent.append(1), until=lambda: len(sent) >= 20, repeat=True,
    )  # fmt: skip
    assert 20 <= stats.sent <= 22  # each thread finishes the row in hand


def test_feedback_share_is_about_what_was_asked() -> None:
    mask = choose_feedback(10_000, 0.3, seed=1)
    assert 0.28 < mask.mean() < 0.32
