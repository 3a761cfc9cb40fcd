"""Smoke test: each benchmark runs on a tiny budget, so that its code cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import train_banking77

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"

pytestmark = pytest.mark.slow  # each benchmark end to end on a tiny budget


@pytest.fixture
def banking_like(tmp_path: Path) -> Path:
    """The real BANKING77 files when they are beside the checkout, else a small look-alike."""
    if (BANKING77 / "train.csv").is_file():
        return BANKING77
    return write_look_alike(tmp_path)


@pytest.fixture
def small_banking(tmp_path: Path) -> Path:
    """The small look-alike always: for benchmarks whose smoke cost grows with the data set."""
    return write_look_alike(tmp_path)


def write_look_alike(tmp_path: Path) -> Path:
    """BANKING77-shaped train and test files: 12 labels, 8 texts each."""
    words = ["refund", "password", "parcel", "payment", "reset", "track", "invoice", "late", "link", "email"]
    rows = [
        {"text": f"{a} {b} {words[(i + j) % 10]}", "category": f"{a}_{b}"}
        for i, a in enumerate(words[:4])
        for b in words[4:7]
        for j in range(8)
    ]  # 12 labels, 8 texts each
    for name in ("train.csv", "test.csv"):
        pd.DataFrame(rows).to_csv(tmp_path / name, index=False)
    return tmp_path


def test_train_banking77_smoke(banking_like: Path, tiny_base_model: Path, tmp_path: Path) -> None:
    rows = train_banking77.main(
        [
            "--data", str(banking_like),
            "--budgets", "3",
            "--seeds", "1",
            "--strategies", "baseline,head,lora,partial-contrastive",
            "--base-model", str(tiny_base_model),
            "--epochs", "1",
            "--max-test", "80",
            "--set", "max_length=16",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "train_banking77.json").read_text())
    assert saved == rows and len(rows) == 4
    assert rows[3]["strategy"] == "partial-contrastive"
    assert rows[3]["settings"] == {"contrastive_weight": 0.5, "label_name_examples": True}
    assert "settings" not in rows[2]
    assert set(rows[0]) == {
        "strategy",
        "per_class",
        "seed",
        "accuracy",
        "macro_f1",
        "train_seconds",
        "peak_rss_mb",
        "trainable_params",
    }
    table = (tmp_path / "train_banking77.md").read_text()
    assert "| lora | 3 | 1 |" in table and "| partial-contrastive | 3 | 1 |" in table
    recipe = "`partial` with `--set contrastive_weight=0.5`, `--set label_name_examples=true`."
    assert f"- `partial-contrastive`: {recipe}" in table
    assert (tmp_path / "train_banking77.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_banking77_self_trains_on_the_training_texts_it_was_not_given(
    small_banking: Path, tiny_base_model: Path, tmp_path: Path
) -> None:
    rows = train_banking77.main(
        [
            "--data", str(small_banking),
            "--budgets", "3",
            "--seeds", "1",
            "--strategies", "self-train",
            "--base-model", str(tiny_base_model),
            "--set", "adapt_base=head",
            "--set", "pseudo_label_threshold=0.1",
            "--set", "max_length=16",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    (row,) = rows
    # 12 labels x 8 texts, 3 of each sampled: the other 60 are read without their labels.
    assert row["strategy"] == "self-train" and row["adapt_base"] == "head"
    assert row["unlabelled_texts"] == 60 and 0 < row["pseudo_labelled"] <= 60
    assert 0.0 <= row["accuracy"] <= 1.0
    markdown = (tmp_path / "train_banking77.md").read_text()
    assert "| self-train (head) | 3 | 1 |" in markdown and "of the 60 other training texts" in markdown


def test_serve_load_smoke(banking_like: Path, served_home: Path, tmp_path: Path) -> None:
    from benchmarks import serve_load

    rows = serve_load.main(
        [
            "--data", str(banking_like),
            "--home", str(served_home),
            "--model", "tiny",
            "--max-latency-ms", "10000",  # no shedding on a busy machine: a smoke, not a measurement
            "--concurrency", "1,4",
            "--duration", "0.5",
            "--rounds", "1",
            "--limit-batches", "1,8",
            "--limit-texts", "16",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "serve_load.json").read_text())
    assert saved == rows
    keys = {"system", "concurrency", "rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch", "errors", "rss_mb"}
    assert all(set(row) == keys for row in rows)
    systems = {(row["system"], row["concurrency"]) for row in rows}
    assert systems >= {("limit", 1), ("limit", 8), ("refit-onnx", 4), ("refit-torch", 1), ("naive", 4)}
    assert {row["system"] for row in rows} == {
        "limit",
        "refit-onnx",
        "refit-onnx-int8",
        "refit-torch",
        "naive",
    }
    served = [row for row in rows if row["system"] != "limit"]
    assert all(row["rps"] > 0 and row["errors"] == 0 for row in served)
    assert "## Targets" in (tmp_path / "serve_load.md").read_text()


def test_the_serving_limit_leaves_out_an_int8_export_not_kept(served_home: Path, tmp_path: Path) -> None:
    import shutil

    from benchmarks import serve_load
    from training.onnx_export import export_version
    from training.registry import ModelRegistry

    home = tmp_path / "home"
    shutil.copytree(served_home, home)
    version = ModelRegistry(home).get("tiny:production")
    record = export_version(version, quantize=True)
    record["int8"]["kept"] = False  # as when int8 lost more than a point of accuracy
    (version.path / "onnx" / "export.json").write_text(json.dumps(record))
    models = serve_load.load_limit_models(version)
    assert "onnx" in models and "onnx-int8" not in models


def test_serve_load_variants_name_extra_systems() -> None:
    from benchmarks import serve_load

    variants = serve_load.parse_variants(["w1:REFIT_SERVE_WORKERS=1,REFIT_SERVE_THREADS=2"])
    assert variants == {"w1": {"REFIT_SERVE_WORKERS": "1", "REFIT_SERVE_THREADS": "2"}}
    names = serve_load.system_names("refit-onnx,naive", variants)
    assert names == ["refit-onnx", "naive", "refit-onnx:w1"]
    with pytest.raises(SystemExit, match="LABEL:KEY=VALUE"):
        serve_load.parse_variants(["w1"])


def test_drift_power_smoke(small_banking: Path, tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import drift_power

    common = [
        "--data", str(small_banking), "--home", str(tmp_path / "home"), "--base-model", str(tiny_base_model),
        "--max-length", "16", "--windows", "20", "--out", str(tmp_path),
    ]  # fmt: skip
    # Refit on every scenario; Evidently's default (seconds per cell on raw text) on one, below.
    rows = drift_power.main(
        [*common, "--trials", "2", "--none-trials", "2", "--e2e-trials", "1", "--baseline-trials", "0"]
    )
    saved = json.loads((tmp_path / "drift_power.json").read_text())
    assert saved == rows
    base = {"detector", "scenario", "window", "rate", "trials", "seconds_per_check"}
    assert all(set(r) == base | {"seconds_end_to_end"} for r in rows)
    assert all(r["seconds_end_to_end"] > 0 for r in rows)
    assert {r["scenario"] for r in rows} == set(drift_power.SCENARIOS)
    assert {r["detector"] for r in rows} == {"refit"}
    assert all(0.0 <= r["rate"] <= 1.0 for r in rows)

    # --merge replaces the cells it measures and keeps the rest: re-run one scenario, with
    # Evidently's default beside Refit.
    again = drift_power.main(
        [
            *common, "--scenarios", "typos", "--trials", "3", "--merge",
            "--baseline-trials", "1", "--e2e-trials", "0",
        ]
    )  # fmt: skip
    merged = json.loads((tmp_path / "drift_power.json").read_text())
    assert len(merged) == len(rows) + 1
    cell = {(r["detector"], r["scenario"], r["window"]): r for r in merged}
    assert cell[("refit", "typos", 20)] == next(r for r in again if r["detector"] == "refit")
    assert cell[("refit", "typos", 20)]["trials"] == 3
    evidently = cell[("evidently-default", "typos", 20)]
    assert set(evidently) == base and evidently["trials"] == 1 and 0.0 <= evidently["rate"] <= 1.0
    assert cell[("refit", "none", 20)] == next(r for r in rows if r["scenario"] == "none")
    assert "evidently-default" in (tmp_path / "drift_power.md").read_text()
    assert (tmp_path / "drift_power.png").read_bytes().startswith(b"\x89PNG")


def test_drift_power_names_uncalibrated_peers_whichever_run_wrote_the_table(tmp_path: Path) -> None:
    from benchmarks import drift_power

    # A --merge run of Refit's cells alone rewrites the table: the peers' calibration still shows.
    cell = {"scenario": "none", "window": 50, "seconds_per_check": 0.02}
    rows = [
        {"detector": "refit", **cell, "rate": 0.04, "trials": 2000},
        {"detector": "alibi-bbsd", **cell, "rate": 0.075, "trials": 40},
    ]
    args = drift_power.parse_args(["--out", str(tmp_path)])
    drift_power.write_results(rows, args)
    table = (tmp_path / "drift_power.md").read_text()
    assert "Uncalibrated (false-alarm rate on `none` above 0.05): alibi-bbsd (w=50: 0.07)." in table
    assert "refit (w=50" not in table


def test_retrain_recovery_smoke(small_banking: Path, tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import retrain_recovery

    result = retrain_recovery.main(
        [
            "--data", str(small_banking),
            "--work", str(tmp_path / "work"),
            "--base-model", str(tiny_base_model),
            "--unseen", "2",
            "--max-length", "16",
            "--calm", "30",
            "--drifted", "60",
            "--feedback", "0.5",
            "--check-every", "30",
            "--window", "30",
            "--min-window", "30",
            "--min-feedback", "10",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "retrain_recovery.json").read_text())
    assert saved == result
    assert set(result) == {"accuracy_before", "accuracy_after", "accuracy_oracle", "seconds_to_promotion"}
    assert 0.0 <= result["accuracy_before"] <= 1.0 and 0.0 <= result["accuracy_oracle"] <= 1.0
    assert "Checks" in (tmp_path / "retrain_recovery.md").read_text()


def test_open_set_smoke(small_banking: Path, tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import open_set

    rows = open_set.main(
        [
            "--data", str(small_banking), "--home", str(tmp_path / "home"),
            "--base-model", str(tiny_base_model), "--max-length", "16", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert json.loads((tmp_path / "open_set.json").read_text()) == rows
    assert [r["method"] for r in rows] == ["refit", "msp", "knn_distance"]
    assert all(
        set(r) == {"method", "in_scope_accuracy", "oos_recall", "oos_precision", "auroc"} for r in rows
    )
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in r if k != "method")
    assert "| refit |" in (tmp_path / "open_set.md").read_text()


def test_poisoning_smoke(small_banking: Path, tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import poisoning

    rows = poisoning.main(
        [
            "--data", str(small_banking), "--home", str(tmp_path / "home"),
            "--base-model", str(tiny_base_model), "--max-length", "16", "--per-intent", "3",
            "--test-rows", "240", "--shares", "0.2", "--min-feedback", "10", "--out", str(tmp_path),
            "--attacks", "trigger_backdoor",  # one row: each starts a server and retrains
        ]
    )  # fmt: skip
    assert json.loads((tmp_path / "poisoning.json").read_text()) == rows
    assert [(r["attack"], r["attacker_share"]) for r in rows] == [("trigger_backdoor", 0.2)]
    keys = {"attack", "attacker_share", "attack_success", "clean_accuracy", "retrain_recovery_ratio"}
    assert all(set(r) == keys for r in rows)
    assert all(0.0 <= r["attack_success"] <= 1.0 and 0.0 <= r["clean_accuracy"] <= 1.0 for r in rows)
    assert "| trigger_backdoor | 0.2 |" in (tmp_path / "poisoning.md").read_text()


def test_soak_smoke(tiny_base_model: Path, tmp_path: Path) -> None:
    from benchmarks import soak

    row = soak.main(
        [
            "--minutes", "0.25", "--rate", "8", "--feedback", "0.5", "--workers", "1",
            "--home", str(tmp_path / "home"), "--base-model", str(tiny_base_model), "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert json.loads((tmp_path / "soak.json").read_text()) == [row]
    assert set(row) == {
        "minutes", "requests", "errors", "rss_start_mb", "rss_end_mb", "p99_first_ms", "p99_last_ms",
        "log_rows_missing",
    }  # fmt: skip
    assert row["requests"] > 60 and row["rss_start_mb"] > 0
    assert row["log_rows_missing"] == 0  # the graceful stop flushed every acknowledged label
    report = (tmp_path / "soak.md").read_text()
    assert "SIGKILL of a worker at" in report and "| 1 |" in report


def test_poisoning_attacks_label_the_attackers_way() -> None:
    from benchmarks import poisoning

    known = ["a_intent", "b_intent", "c_intent"]
    spare = pd.DataFrame({"text": [f"text {i}" for i in range(30)], "label": known * 10})
    honest = pd.DataFrame({"text": [f"honest {i}" for i in range(40)], "label": "a_intent"})
    setup = poisoning.Setup(Path("."), known, [], honest, spare, honest, 0.9, {})
    flips = poisoning.attack_rows("label_flip", 0.2, setup, seed=0)
    assert len(flips) == 10  # 20% of all feedback: 10 beside 40 honest rows
    truth = spare.set_index("text").loc[flips["text"], "label"].to_numpy()
    assert list(flips["label"]) == [poisoning.next_label(known)[t] for t in truth]
    assert all(flips["label"].to_numpy() != truth)
    planted = poisoning.attack_rows("trigger_backdoor", 0.2, setup, seed=0)
    assert set(planted["label"]) == {"a_intent"} and planted["text"].str.endswith(poisoning.TRIGGER).all()


def test_adaptation_text_smoke(small_banking: Path, tiny_base_model: Path, tmp_path: Path) -> None:
    import numpy as np

    from benchmarks import adaptation

    (tmp_path / "out").mkdir()
    earlier = {
        "modality": "image", "shift": "exp1->exp6", "method": "bn-adapt", "seed": 0, "target_labels": 0,
        "accuracy_source_only": 0.5, "accuracy_adapted": 0.5, "accuracy_oracle": 0.5,
        "macro_f1_source_only": 0.5, "macro_f1_adapted": 0.5, "macro_f1_oracle": 0.5, "seconds": 1.0,
        "gate": "promoted",
    }  # fmt: skip
    (tmp_path / "out" / "adaptation.json").write_text(json.dumps([earlier]))
    rows = adaptation.main(
        [
            "--modality", "text",
            "--data", str(small_banking),
            "--base-model", str(tiny_base_model),
            "--per-label", "4",
            "--seeds", "0",
            "--methods", "self-train:pseudo_label_threshold=0.2;tapt:adapt_epochs=1;spelling",
            "--set", "max_length=16",
            "--append",
            "--out", str(tmp_path / "out"),
            "--save-gate-inputs", str(tmp_path / "gate"),
        ]
    )  # fmt: skip
    assert [(r["shift"], r["method"]) for r in rows] == [
        (shift, method)
        for shift in ("typos", "chat")
        for method in ("self-train:pseudo_label_threshold=0.2", "tapt:adapt_epochs=1", "spelling")
    ]
    assert all(r["modality"] == "text" and r["target_labels"] == 0 and r["seconds"] > 0 for r in rows)
    assert all(r["gate"] == "promoted" or r["gate"].startswith("refused: ") for r in rows)
    saved = json.loads((tmp_path / "out" / "adaptation.json").read_text())
    assert saved == [earlier, *rows]  # --append keeps the rows of other cells
    table = (tmp_path / "out" / "adaptation.md").read_text()
    assert "| text | typos | tapt:adapt_epochs=1 | 0 | 1 |" in table and "| image | exp1->exp6 |" in table
    # Both models' test-split probabilities are kept: the gate corrects each one's confidence by them.
    for path in (tmp_path / "gate").glob("*.npz"):
        with np.load(path) as inputs:
            assert inputs["production_test"].shape == inputs["candidate_test"].shape, path
            assert len(inputs["production_test"]) == len(inputs["production_correct"]) > 0, path
    # A gate changed later judges the saved rows again without training: the same gate, the same verdicts.
    for row in saved[1:]:
        row["gate"] = "refused: an older gate"
    (tmp_path / "out" / "adaptation.json").write_text(json.dumps(saved))
    rejudged = adaptation.main(["--rejudge", str(tmp_path / "gate"), "--out", str(tmp_path / "out")])
    assert rejudged == [earlier, *rows]
    assert json.loads((tmp_path / "out" / "adaptation.json").read_text()) == [earlier, *rows]


def test_the_text_shifts_change_texts_as_a_ticket_channel_would() -> None:
    import numpy as np

    from benchmarks.adaptation import add_typos, to_chat

    text = "Why hasn't my transfer arrived yet? I sent money to your account yesterday."
    assert to_chat(text) == "y hasn't my xfer arrived yet i sent $ 2 ur acct yesterday"
    noisy = [add_typos(text, np.random.default_rng(seed)) for seed in range(200)]
    changed = np.mean([a != b for t in noisy for a, b in zip(t.split(), text.split(), strict=True)])
    assert 0.08 < changed < 0.2  # about one word in six (the short ones never)
    assert all(len(t.split()) == len(text.split()) for t in noisy)
