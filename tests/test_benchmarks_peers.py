"""Smoke tests of the side-by-side benchmarks: Refit's side always; a peer's side only where its
virtualenv already exists (CI does not install peers), else skipped with the reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.peers import NO_TELEMETRY, PEERS, PeerUnavailable, peer_python, run_peer
from tests.test_benchmarks import write_look_alike

pytestmark = pytest.mark.slow  # each benchmark end to end on a tiny budget


def installed(peer: str) -> bool:
    return (PEERS / peer / ".venv" / ".installed").is_file()


def accuracy_estimate_args(tmp_path: Path, tiny_base_model: Path, peers: str) -> list[str]:
    return [
        "--data", str(write_look_alike(tmp_path)), "--home", str(tmp_path / "home"),
        "--base-model", str(tiny_base_model), "--max-length", "16", "--windows", "20,40",
        "--trials", "3", "--peers", peers, "--out", str(tmp_path),
    ]  # fmt: skip


def test_accuracy_estimate_smoke(tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import accuracy_estimate

    rows = accuracy_estimate.main(accuracy_estimate_args(tmp_path, tiny_base_model, ""))
    assert json.loads((tmp_path / "accuracy_estimate.json").read_text()) == rows
    assert all(set(r) == {"estimator", "scenario", "window", "mae", "trials"} for r in rows)
    cells = {(r["scenario"], r["window"]) for r in rows}
    assert cells == {(s, w) for s in accuracy_estimate.SCENARIOS for w in (20, 40)}
    assert {r["estimator"] for r in rows} == {"refit"}
    assert all(0.0 <= r["mae"] <= 1.0 and r["trials"] == 3 for r in rows)
    table = (tmp_path / "accuracy_estimate.md").read_text()
    assert "| none | 20 | 3 |" in table and "`refit`" in table
    assert re.search(r"reference rows themselves \(realised accuracy [01]\.\d{4}\), refit estimates", table)
    assert (tmp_path / "accuracy_estimate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not installed("nannyml"), reason="the nannyml peer's virtualenv is not installed here")
def test_accuracy_estimate_runs_nannyml_beside_refit(tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import accuracy_estimate

    rows = accuracy_estimate.main(accuracy_estimate_args(tmp_path, tiny_base_model, "nannyml"))
    by = {(r["estimator"], r["scenario"], r["window"]): r for r in rows}
    assert {e for e, _, _ in by} == {"refit", "nannyml"}
    assert all(0.0 <= r["mae"] <= 1.0 for r in rows)
    table = (tmp_path / "accuracy_estimate.md").read_text()
    assert "NannyML 0.13.1" in table and re.search(r"nannyml estimates [01]\.\d{4}", table)


def test_a_peer_runs_with_its_usage_reporting_off(tmp_path: Path) -> None:
    (tmp_path / "echo").mkdir()
    (tmp_path / "echo" / "requirements.txt").write_text("# nothing beyond the standard library\n")
    (tmp_path / "echo" / "env.py").write_text("import json, os\nprint(json.dumps(dict(os.environ)))\n")
    seen = json.loads(run_peer("echo", "env.py", root=tmp_path))
    assert {key: seen.get(key) for key in NO_TELEMETRY} == NO_TELEMETRY
    assert NO_TELEMETRY["NML_DISABLE_USAGE_LOGGING"] == "1" and NO_TELEMETRY["RAY_USAGE_STATS_ENABLED"] == "0"


def test_a_peer_that_cannot_be_installed_says_why(tmp_path: Path) -> None:
    (tmp_path / "ghost").mkdir()
    (tmp_path / "ghost" / "requirements.txt").write_text("refit-peer-that-does-not-exist==0.0.1\n")
    with pytest.raises(PeerUnavailable, match=r"ghost: .*failed:\n(.|\n)*refit-peer-that-does-not-exist"):
        peer_python("ghost", root=tmp_path)
    with pytest.raises(PeerUnavailable, match=r"no .*requirements\.txt"):
        peer_python("absent", root=tmp_path)


@pytest.mark.skipif(not installed("setfit"), reason="the setfit peer's virtualenv is not installed here")
def test_train_banking77_runs_setfit_beside_refit(tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import train_banking77

    rows = train_banking77.main(
        [
            "--data", str(write_look_alike(tmp_path)), "--budgets", "4", "--seeds", "1",
            "--strategies", "setfit,head", "--setfit-iterations", "1", "--base-model", str(tiny_base_model),
            "--set", "max_length=16", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert [r["strategy"] for r in rows] == ["setfit", "head"]
    setfit = rows[0]
    assert set(setfit) == set(rows[1]) and 0.0 <= setfit["accuracy"] <= 1.0
    assert setfit["trainable_params"] > 0 and setfit["train_seconds"] > 0
    markdown = (tmp_path / "train_banking77.md").read_text()
    assert "| setfit | 4 | 1 |" in markdown and "Peers: setfit 1." in markdown


def test_train_banking77_appends_cells_and_says_which_peer_did_not_run(tmp_path: Path) -> None:
    from benchmarks import train_banking77

    row = {"strategy": "head", "per_class": 10, "seed": 0, "accuracy": 0.85, "macro_f1": 0.85,
           "train_seconds": 20.0, "peak_rss_mb": 900.0, "trainable_params": 29645}  # fmt: skip
    kept = [row, {**row, "seed": 1}]
    merged = train_banking77.merge_rows(kept, [{**row, "accuracy": 0.86}, {**row, "strategy": "setfit"}])
    assert [(r["strategy"], r["seed"], r["accuracy"]) for r in merged] == [
        ("head", 0, 0.86),
        ("head", 1, 0.85),
        ("setfit", 0, 0.85),
    ]
    note = "`setfit` did not run (10 per intent, seed 0): setfit: pip install failed"
    env = {"device": "CPU", "torch": "2.13.0", "when": "2026-12-03"}
    table = train_banking77.render_markdown(merged, env, (note,))
    assert note in table and "| setfit | 10 | 1 |" in table


@pytest.mark.skipif(not installed("alibi"), reason="the alibi peer's virtualenv is not installed here")
def test_drift_power_runs_alibi_detectors_beside_refit(tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import drift_power

    rows = drift_power.main(
        [
            "--data", str(write_look_alike(tmp_path)), "--home", str(tmp_path / "home"),
            "--base-model", str(tiny_base_model), "--max-length", "16", "--windows", "20",
            "--scenarios", "none,typos", "--trials", "2", "--none-trials", "2", "--baseline-trials", "0",
            "--e2e-trials", "0", "--peers", "alibi-mmd,alibi-classifier,alibi-bbsd", "--peer-trials", "2",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "drift_power.json").read_text())
    assert saved == sorted(saved, key=lambda r: (r["scenario"] != "none", r["detector"] != "refit"))
    cells = {(r["detector"], r["scenario"]) for r in saved}
    detectors = ("refit", "refit-peer-windows", "alibi-mmd", "alibi-classifier", "alibi-bbsd")
    assert cells == {(d, s) for d in detectors for s in ("none", "typos")}
    peers = [r for r in rows if r["detector"].startswith("alibi-")]
    assert all(r["trials"] == 2 and 0.0 <= r["rate"] <= 1.0 and r["seconds_per_check"] > 0 for r in peers)
    paired = [r for r in rows if r["detector"] == "refit-peer-windows"]
    assert len(paired) == 2 and all(r["trials"] == 2 and 0.0 <= r["rate"] <= 1.0 for r in paired)
    assert "alibi-bbsd" in (tmp_path / "drift_power.md").read_text()


@pytest.mark.skipif(not installed("nannyml"), reason="the nannyml peer's virtualenv is not installed here")
def test_drift_power_runs_nannyml_detectors_beside_refit(tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import drift_power

    rows = drift_power.main(
        [
            "--data", str(write_look_alike(tmp_path)), "--home", str(tmp_path / "home"),
            "--base-model", str(tiny_base_model), "--max-length", "16", "--windows", "10",
            "--scenarios", "none,length", "--trials", "2", "--none-trials", "2", "--baseline-trials", "0",
            "--e2e-trials", "0", "--peers", "nannyml-univariate,nannyml-multivariate", "--peer-trials", "3",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    peers = [r for r in rows if r["detector"].startswith("nannyml-")]
    assert {(r["detector"], r["scenario"]) for r in peers} == {
        (d, s) for d in ("nannyml-univariate", "nannyml-multivariate") for s in ("none", "length")
    }
    assert all(r["trials"] == 3 and 0.0 <= r["rate"] <= 1.0 and r["seconds_per_check"] > 0 for r in peers)
    assert "nannyml-multivariate" in (tmp_path / "drift_power.md").read_text()


def serve_peers_args(home: Path, data: Path, out: Path, peers: str) -> list[str]:
    # A queue deadline no smoke run reaches: on a machine busy with other tests Refit's server shed
    # requests at concurrency 32 (503s at a p99 of 65 ms); shedding is what the real run measures.
    return [
        "--max-latency-ms", "10000",
        "--peers", peers, "--data", str(data), "--home", str(home), "--model", "tiny",
        "--concurrency", "1,32", "--duration", "0.5", "--rounds", "1", "--limit-batches", "1,32",
        "--limit-seconds", "0.3", "--tune-duration", "0.5", "--tune-concurrency", "4", "--out", str(out),
    ]  # fmt: skip


ROW_KEYS = {"system", "concurrency", "rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch", "errors", "rss_mb"}


def test_serve_load_peers_smoke(served_home: Path, tmp_path: Path) -> None:
    """The naive server on the same ONNX session needs no peer virtualenv: always measured."""
    from benchmarks import serve_load

    data = write_look_alike(tmp_path)
    variant = ["--variant", "chunk1:REFIT_SERVE_CHUNK_SIZE=1"]  # Refit with other settings, beside it
    rows = serve_load.main([*serve_peers_args(served_home, data, tmp_path, "naive-onnx"), *variant])
    assert json.loads((tmp_path / "serve_peers.json").read_text()) == rows
    assert all(set(row) == ROW_KEYS for row in rows)
    cells = {(row["system"], row["concurrency"]) for row in rows}
    assert cells == {("limit", 1), ("limit", 32)} | {
        (s, c) for s in ("refit-onnx", "refit-onnx:chunk1", "naive-onnx") for c in (1, 32)
    }
    assert all(row["rps"] > 0 and row["errors"] == 0 for row in rows)
    report = (tmp_path / "serve_peers.md").read_text()
    assert "## Targets" in report and "of the best in-process limit" in report
    assert "Peers ran: naive-onnx" in report
    assert (tmp_path / "serve_peers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("peer", ["litserve", "mosec", "ray-serve", "triton"])
def test_serve_load_measures_each_serving_peer(peer: str, served_home: Path, tmp_path: Path) -> None:
    if not installed(peer):
        pytest.skip(f"the {peer} peer's virtualenv is not installed here")
    from benchmarks import serve_load

    data = write_look_alike(tmp_path)
    rows = serve_load.main(serve_peers_args(served_home, data, tmp_path, peer))
    theirs = [row for row in rows if row["system"] == peer]
    assert [row["concurrency"] for row in theirs] == [1, 32]
    assert all(row["rps"] > 0 and row["errors"] == 0 for row in theirs)
    report = (tmp_path / "serve_peers.md").read_text()
    assert f"| {peer} | batch<=64, wait 2 ms" in report  # every setting tried is reported
    assert report.count("| yes |") == 1


def test_serve_load_peers_refuses_unknown_peers_and_images() -> None:
    from benchmarks import serve_load

    with pytest.raises(SystemExit):
        serve_load.parse_args(["--peers", "torchserve"])
    with pytest.raises(SystemExit):
        serve_load.parse_args(["--peers", "--modality", "image"])
    assert serve_load.parse_args(["--peers"]).peers.split(",") == list(serve_load.SERVING_PEERS)


def test_peer_targets_compare_refit_with_the_best_peer() -> None:
    from benchmarks.serve_peers import best_limit, check_peer_targets, limit_layouts

    def row(system: str, concurrency: int, rps: float, p99: float) -> dict[str, object]:
        return {"system": system, "concurrency": concurrency, "rps": rps, "p99_ms": p99, "errors": 0}

    rows, winners = best_limit(
        [row("limit:1x2", 32, 500, 80), row("limit:2x1", 32, 600, 90), row("limit:1x2", 64, 520, 150)]
        + [row("limit:2x1", 64, 510, 160)]
        + [row("refit-onnx", c, 400, 100) for c in (8, 32, 64)]
        + [row("mosec", c, 450, 90) for c in (8, 32, 64)]
        + [row("litserve", c, 300, 200) for c in (8, 32, 64)]
        + [row("refit-onnx:variant", c, 900, 10) for c in (8, 32, 64)]  # not a peer
    )
    assert winners == {32: "2x1", 64: "1x2"}
    assert [(r["concurrency"], r["rps"]) for r in rows if r["system"] == "limit"] == [(32, 600), (64, 520)]
    lines = check_peer_targets(rows)
    assert (
        "throughput at concurrency 32: 400 texts/s vs best peer mosec 450 (0.89x; target >= 1x): NOT met"
        in lines[0]
    )
    assert "p99 at concurrency 8: 100 ms vs best peer mosec 90 ms (target <=): NOT met" in lines[2]
    assert any("67% of the best in-process limit (600 texts/s)" in line for line in lines)
    assert limit_layouts(2) == [(1, 2), (2, 1)] and limit_layouts(4) == [(1, 4), (2, 2), (4, 1)]


def test_triton_requests_round_trip_the_kserve_protocol() -> None:
    from benchmarks.serve_peers import triton_answer, triton_request

    body = triton_request("my card was declined")
    assert body["inputs"][0] == {
        "name": "texts",
        "shape": [1, 1],
        "datatype": "BYTES",
        "data": ["my card was declined"],
    }
    answer = {
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [1, 1], "data": ["declined_card"]},
            {"name": "confidence", "datatype": "FP32", "shape": [1, 1], "data": [0.93]},
        ]
    }
    assert triton_answer(answer) == {"label": "declined_card", "confidence": 0.93}
