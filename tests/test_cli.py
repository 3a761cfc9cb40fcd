"""CLI tests through the real entry point: train, models list/show/promote/rollback/export/delete."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import run_cli, tiny_rows


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_base_model: Path,
):  # type: ignore[no-untyped-def]
    home = str(tmp_path / "home")
    common = ["--home", home]

    def call(*args: str, train_flags: bool = False) -> tuple[int, str]:
        extra = [
            "--base-model",
            str(tiny_base_model),
            "--set",
            "max_length=16",
            "--set",
            "profile_rows=10",
        ]
        return run_cli([*args, *common, *(extra if train_flags else [])], capsys, monkeypatch)

    return call


def test_train_then_manage_versions(cli, tiny_csv: Path) -> None:  # type: ignore[no-untyped-def]
    code, out = cli("train", str(tiny_csv), "--strategy", "head", "--name", "tickets", train_flags=True)
    assert code == 0, out
    assert "registered tickets:" in out and "stage production" in out
    code, out = cli("train", str(tiny_csv), "--strategy", "baseline", "--name", "tickets", train_flags=True)
    assert code == 0 and "stage candidate" in out

    code, out = cli("models", "list")
    assert code == 0 and out.count("tickets:") == 2 and "head" in out and "baseline" in out

    code, out = cli("models", "show", "tickets:candidate")
    assert code == 0 and "baseline" in out and "not exported" in out

    code, out = cli("models", "export", "tickets", "--quantize")
    assert code == 0 and "parity max |diff|" in out and "on the test split (" in out
    assert "int8 (dynamic (per-channel weights)): accuracy" in out
    code, out = cli("models", "show", "tickets")
    said = " ".join(out.split())
    assert code == 0 and "onnx/model.onnx: parity max |diff|" in said and "{'file'" not in said
    assert "int8 (dynamic (per-channel weights)): accuracy" in said

    code, out = cli("models", "promote", "tickets:latest")
    assert code == 0 and "is now production" in out
    code, out = cli("models", "rollback", "tickets")
    assert code == 0 and "rolled back" in out
    code, out = cli("models", "rollback", "tick")  # a typo names the models there
    assert code == 2 and "No model named 'tick'" in out and "Models: tickets." in out

    code, out = cli("models", "delete", "tickets:production", "--yes")
    assert code == 2 and "Refusing to delete" in out
    code, out = cli("models", "delete", "tickets:production")  # refused before asking, not after
    assert code == 2 and "Refusing to delete" in out and "?" not in out.split("Refusing")[0]
    code, out = cli("models", "delete", "tickets:latest", "--yes")
    assert code == 0 and "deleted" in out


def test_deleting_the_rollback_target_says_what_rollback_will_do(cli, tiny_csv: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from training.registry import ModelRegistry

    for _ in range(3):
        code, out = cli("train", str(tiny_csv), "--strategy", "baseline", "--name", "t", train_flags=True)
        assert code == 0, out
    first, second, third = (v.tag for v in ModelRegistry(tmp_path / "home").versions("t"))
    for tag in (second, third):
        assert cli("models", "promote", tag)[0] == 0
    code, out = cli("models", "delete", second, "--yes")
    assert code == 0 and " ".join(out.split()) == (
        f"deleted {second} It is the version `refit models rollback t` restores; without it, it will "
        f"restore {first}."
    ), out
    code, out = cli("models", "delete", first, "--yes")
    assert code == 0 and " ".join(out.split()) == (
        f"deleted {first} It is the version `refit models rollback t` restores; without it, there "
        "will be no earlier production version to restore."
    ), out
    code, out = cli("models", "rollback", "t")
    assert code == 2 and "no earlier production version" in out, out


def test_models_list_shows_whole_tags_on_a_narrow_terminal(cli, tiny_csv: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import io

    from rich.console import Console

    from training.console import render_versions
    from training.registry import ModelRegistry

    for strategy in ("baseline", "head"):
        code, out = cli("train", str(tiny_csv), "--strategy", strategy, "--name", "tickets", train_flags=True)
        assert code == 0, out
    versions = ModelRegistry(tmp_path / "home").versions("tickets")
    narrow = Console(file=io.StringIO(), width=100)
    narrow.print(render_versions(versions))
    shown = narrow.file.getvalue()  # type: ignore[attr-defined]
    # The tag is what `refit models promote` takes; it was cut to "tickets:ab12cd…" at 140 columns.
    assert all(v.tag in shown and v.version in shown for v in versions), shown
    # The test set's file name and fingerprint fold; nothing is cut ("test-split-o…", "sha256:a2de0…").
    assert "…" not in shown, shown


def test_train_quantises_the_new_version_when_asked(cli, tiny_csv: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from training.onnx_files import read_export_record
    from training.registry import ModelRegistry

    code, out = cli(
        "train", str(tiny_csv), "--strategy", "head", "--name", "t", "--quantize", train_flags=True
    )
    assert code == 0, out
    assert "exported to ONNX: parity" in out and "int8 (dynamic (per-channel weights)): accuracy" in out
    record = read_export_record(ModelRegistry(tmp_path / "home").get("t:production"))
    assert record is not None and "int8" in record


def test_promote_exports_a_version_as_production_was(cli, tiny_csv: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from training.onnx_files import read_export_record
    from training.registry import ModelRegistry

    for strategy, flags in (("head", ["--quantize"]), ("baseline", [])):
        args = ("train", str(tiny_csv), "--strategy", strategy, "--name", "t", *flags)
        code, out = cli(*args, train_flags=True)
        assert code == 0, out
    candidate = ModelRegistry(tmp_path / "home").get("t:candidate")
    assert read_export_record(candidate) is None
    # A service on onnx-int8 would otherwise quantise it in the worker that swaps to it.
    code, out = cli("models", "promote", candidate.tag)
    assert code == 0, out
    assert f"exported and quantised {candidate.tag} as production was" in " ".join(out.split())
    record = read_export_record(candidate)
    assert record is not None and "int8" in record


def test_rollback_exports_the_version_it_restores_as_production_was(  # type: ignore[no-untyped-def]
    cli, tiny_csv: Path, tmp_path: Path
) -> None:
    from training.onnx_files import read_export_record
    from training.registry import ModelRegistry

    for strategy in ("head", "baseline"):
        code, out = cli("train", str(tiny_csv), "--strategy", strategy, "--name", "t", train_flags=True)
        assert code == 0, out
    registry = ModelRegistry(tmp_path / "home")
    earlier, later = registry.get("t:production"), registry.get("t:candidate")
    code, out = cli("models", "promote", later.tag)
    assert code == 0, out
    code, out = cli("models", "export", later.tag, "--quantize")  # quantised once it served
    assert code == 0, out
    assert read_export_record(earlier) is None

    code, out = cli("models", "rollback", "t")
    assert code == 0, out
    said = " ".join(out.split())
    assert f"exported and quantised {earlier.tag} as production was" in said
    assert f"rolled back: {earlier.tag} is production again" in said
    record = read_export_record(earlier)
    assert record is not None and "int8" in record


def test_train_reads_a_semicolon_separated_spreadsheet_export(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "tickets.csv"
    tiny_rows().to_csv(data, sep=";", index=False, encoding="utf-8-sig")
    code, out = cli("train", str(data), "--strategy", "baseline", "--name", "tickets", train_flags=True)
    assert code == 0, out
    assert "registered tickets:" in out and "not found" not in out


def test_a_test_file_without_the_training_columns_is_named_as_the_test_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, test = tmp_path / "reviews.csv", tmp_path / "test.csv"
    tiny_rows().rename(columns={"text": "review", "label": "stars"}).to_csv(data, index=False)
    tiny_rows(copies=1).to_csv(test, index=False)  # text,label: the default names
    columns = ["--text-column", "review", "--label-column", "stars", "--test-file", str(test)]
    code, out = cli("train", str(data), "--strategy", "baseline", *columns, train_flags=True)
    assert code == 2, out
    assert "Column(s) ['review', 'stars'] not found in" in out and "Found columns: ['text', 'label']" in out
    assert "a test file needs the training data's columns ('review', 'stars'); rename its columns" in out


def test_train_warns_of_labels_the_test_file_never_tests(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, test = tmp_path / "tickets.csv", tmp_path / "test.csv"
    tiny_rows().to_csv(data, index=False)
    rows = tiny_rows(copies=1)
    rows[rows["label"] != "shipping"].to_csv(test, index=False)
    args = ("train", str(data), "--strategy", "baseline", "--name", "tickets", "--test-file", str(test))
    code, out = cli(*args, train_flags=True)
    assert code == 0, out
    assert "1 of 3 labels have no test rows, so the test metrics say nothing of them: ['shipping']" in out


def test_train_warns_of_a_label_written_two_ways(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "tickets.csv"
    rows = tiny_rows()
    rows.loc[rows.index[::4], "label"] = rows["label"].str.capitalize()  # 'Refund' beside 'refund'
    rows.to_csv(data, index=False)
    code, out = cli("train", str(data), "--strategy", "baseline", "--name", "tickets", train_flags=True)
    assert code == 0, out
    assert "written more than one way (case or separators), each spelling trained as a class" in out
    assert "'refund' (" in out and "'Refund' (" in out


def test_train_warns_of_labels_that_join_other_labels(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "tagged.csv"
    rows = tiny_rows()
    rows.loc[rows.index[::5], "label"] = "refund; password"  # a tags column read as one label
    rows.to_csv(data, index=False)
    code, out = cli("train", str(data), "--strategy", "baseline", "--name", "tagged", train_flags=True)
    assert code == 0, out
    said = " ".join(out.split())
    assert "1 label(s) join other labels, each trained as a class of its own from its own rows only" in said
    assert "'refund; password' (" in said and ") = 'refund' + 'password'." in said
    assert "Refit answers one label per text" in said
    # Combinations of one row each stop training; the error says why there are so many labels.
    rows.loc[rows.index[0], "label"] = "shipping, refund"
    rows.to_csv(data, index=False)
    code, out = cli("train", str(data), "--strategy", "baseline", "--name", "tagged", train_flags=True)
    assert code == 2, out
    said = " ".join(out.split())
    assert "1 of them join other labels ('shipping, refund'): the label column holds several tags" in said


def test_a_json_tags_column_is_read_as_one_label_per_row_or_refused(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from training.registry import ModelRegistry

    data, rows = tmp_path / "tagged.jsonl", tiny_rows()
    tags = [[label] for label in rows["label"]]  # an export's tags: a list per row

    def write() -> None:
        lines = [json.dumps({"text": t, "tags": g}) for t, g in zip(rows["text"], tags, strict=True)]
        data.write_text("\n".join(lines) + "\n")

    write()
    args = ("train", str(data), "--label-column", "tags", "--strategy", "baseline", "--name", "tagged")
    code, out = cli(*args, train_flags=True)
    assert code == 0, out
    labels = ModelRegistry(tmp_path / "home").get("tagged").manifest["labels"]
    assert sorted(labels) == sorted(set(rows["label"]))  # a list of one is that label
    tags[2] = ["refund", "shipping"]
    write()
    code, out = cli(*args, train_flags=True)
    assert code == 2, out
    assert "carry several labels in 'tags' (data rows 3; e.g. ['refund', 'shipping'])" in out
    assert "Refit answers one label per text" in out


def test_train_warns_of_a_label_that_stands_for_none(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "export.csv"
    rows = tiny_rows()
    rows.loc[rows.index[::6], "label"] = "N/A"  # a database export's empty cells
    rows.to_csv(data, index=False)
    code, out = cli("train", str(data), "--strategy", "baseline", "--name", "export", train_flags=True)
    assert code == 0, out
    said = " ".join(out.split())
    assert "label(s) 'N/A' (" in said and "rows) look like a missing label" in said
    assert "If those rows have no label, drop them or label them" in said


def test_train_says_when_texts_are_cut(cli, tmp_path: Path, tiny_base_model: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "documents.csv"
    rows = tiny_rows()
    rows["text"] = (rows["text"] + " ") * 8  # 26-42 tokens a text; the tiny BERT reads at most 64
    rows.to_csv(data, index=False)
    common = ["--base-model", str(tiny_base_model), "--strategy", "baseline", "--name", "docs"]
    code, out = cli("train", str(data), *common, "--set", "max_length=16", "--set", "profile_rows=10")
    assert code == 0, out
    said = " ".join(out.split())
    assert "training texts (100%) are longer than max_length (16 tokens) and are read only up to it" in said
    assert "what comes later in them is never seen. --set max_length=64 reads more" in said
    # What the advice allows is what the encoder reads; beyond it, a clear refusal, not a traceback.
    code, out = cli("train", str(data), *common, "--set", "max_length=100")
    assert code == 2, out
    said = " ".join(out.split())
    assert "max_length 100 is more than" in said and "its position embeddings stop at 64 tokens" in said
    # The default (128), never asked for, becomes what the encoder reads, and the version records it.
    code, out = cli("train", str(data), *common, "--set", "profile_rows=10")
    assert code == 0, out
    from training.registry import ModelRegistry

    version = ModelRegistry(tmp_path / "home").get("docs:latest")
    assert json.loads((version.path / "training_config.json").read_text())["max_length"] == 64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train"], "Missing argument 'data'"),
        (["models", "list", "--bogus"], "No such option: --bogus"),
        (["drift", "--since", "5x"], "expected a duration like 30s, 30m, 2h or 1d; found '5x'"),
        (["adapt", "--since", "1y"], "expected a duration like 30s, 30m, 2h or 1d; found '1y'"),
        (["monitor", "--interval", "5y"], "expected a duration like 30s, 30m, 2h or 1d; found '5y'"),
    ],
)
def test_a_usage_error_is_a_short_message_not_a_traceback(cli, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    code, out = cli(*args)
    assert code == 2, out
    assert message in out and "Try 'refit" in out
    assert "Traceback" not in out and ".py" not in out, out  # no frames of a traceback


def test_version_is_the_installed_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import version

    code, out = run_cli(["--version"], capsys, monkeypatch)
    assert code == 0 and out == f"refit {version('refit')}"


def test_unknown_config_key_is_rejected_with_the_valid_keys(cli, tiny_csv: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "train.yaml"
    config.write_text("strategy: head\nepochz: 3\n")
    code, out = cli("train", str(tiny_csv), "--config", str(config))
    assert code == 2
    assert "Unknown config key(s) ['epochz']" in out and "Valid keys:" in out and "epochs" in out


def test_bad_data_is_a_clear_error_not_a_traceback(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out = cli("train", str(tmp_path / "missing.csv"), "--strategy", "head")
    assert code == 2 and "Data file not found" in out and "Traceback" not in out


def test_missing_model_is_a_clear_error(cli) -> None:  # type: ignore[no-untyped-def]
    code, out = cli("models", "show", "ghost")
    assert code == 2 and "No model named 'ghost'" in out


def test_demo_data_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, out = run_cli(["demo-data", str(tmp_path / "d")], capsys, monkeypatch)
    assert code == 0 and (tmp_path / "d" / "train.csv").is_file() and "drift_typos" in out


def test_every_metric_names_its_test_set_and_the_list_flags_different_ones(
    cli, tiny_csv: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import tiny_rows

    held_out = tmp_path / "held_out.csv"
    tiny_rows(copies=1).assign(text=lambda f: f["text"] + " indeed").to_csv(held_out, index=False)
    code, out = cli("train", str(tiny_csv), "--strategy", "head", "--name", "t", train_flags=True)
    assert code == 0, out
    assert "on the test set (20% split of tiny.csv, 6 rows, sha256:" in out
    assert "few rows per label: 'password' has 12, and the validation and test split(s) take" in out
    code, out = cli(
        "train", str(tiny_csv), "--strategy", "head", "--name", "t", "--test-file", str(held_out),
        train_flags=True,
    )  # fmt: skip
    assert code == 0, out
    assert "on the test set (file held_out.csv, 12 rows, sha256:" in out
    code, out = cli("models", "list", "t")
    assert "20% split of tiny.csv, 6 rows" in out and "file held_out.csv, 12 rows" in out
    assert "2 different test sets: compare test metrics only between rows with the same one" in out
    code, out = cli("models", "show", "t:latest")
    assert re.search(r"test set\W+file held_out.csv, 12 rows, sha256:", out), out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("onnx/model.onnx", "does not load and answer as a service would"),
        ("model/model.safetensors", "does not load and answer as a service would"),
    ],
)
def test_a_version_that_cannot_serve_is_not_promoted(
    cli, tiny_csv: Path, tmp_path: Path, damage: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    from training.registry import ModelRegistry

    for strategy in ("head", "baseline"):
        code, out = cli(
            "train",
            str(tiny_csv),
            "--strategy",
            strategy,
            "--name",
            "tickets",
            "--export-onnx",
            train_flags=True,
        )
        assert code == 0, out
    registry = ModelRegistry(tmp_path / "home")
    candidate = registry.get("tickets:candidate")
    target = candidate.path / damage
    target.write_bytes(target.read_bytes()[:100])  # truncated, as a full disk or a bad copy leaves it
    code, out = cli("models", "promote", candidate.tag)
    assert code == 2 and f"{candidate.tag} cannot be promoted: it {message}" in out
    assert registry.get(candidate.tag).stage == "candidate"  # the stages are untouched
