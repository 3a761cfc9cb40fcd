"""Data tests: each validation error by its message, splits, fingerprint, reported findings."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import tiny_rows
from training.config import TrainingConfig
from training.data import DatasetSplits, fingerprint_rows, load_dataset, stratified_split
from training.errors import DataError
from training.modality import TextModality
from training.pipeline import load_splits
from training.tables import read_table


def prepare_splits(path: Path, test_file: Path | None = None) -> DatasetSplits:
    """Splits as `refit train` makes them from a text file (and a test file)."""
    config = TrainingConfig(test_file=test_file)
    return load_splits(path, config, TextModality(config))


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("name", ["data.csv", "data.jsonl", "data.parquet"])
def test_loads_every_supported_format(tmp_path: Path, name: str) -> None:
    frame = load_dataset(_write(tmp_path, tiny_rows(), name))
    assert list(frame.columns) == ["text", "label"]
    assert len(frame) == len(tiny_rows())


def test_a_spreadsheet_s_semicolon_csv_and_a_tsv_load_by_their_header_row(tmp_path: Path) -> None:
    # What Excel saves as "CSV UTF-8" where the decimal mark is a comma: a BOM, semicolons, and
    # quotes around a field that holds the separator.
    excel = tmp_path / "excel.csv"
    lines = ["text;label", '"card lost; please block it, now";card', "where is my parcel, please;shipping"]
    excel.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    frame = read_table(excel)
    assert list(frame.columns) == ["text", "label"]
    assert frame["text"].tolist() == ["card lost; please block it, now", "where is my parcel, please"]
    tsv = tmp_path / "data.tsv"
    tiny_rows().to_csv(tsv, sep="\t", index=False)
    assert load_dataset(tsv).equals(load_dataset(_write(tmp_path, tiny_rows())))
    single = tmp_path / "texts.csv"
    single.write_text('text\nhello; world\n"second, text"\n', encoding="utf-8")  # one column: commas
    assert read_table(single)["text"].tolist() == ["hello; world", "second, text"]


def test_a_json_array_loads_and_a_bad_json_line_is_named(tmp_path: Path) -> None:
    records = tiny_rows().to_dict(orient="records")
    array = tmp_path / "data.json"
    array.write_text(json.dumps(records, indent=2), encoding="utf-8")  # what json.dump writes
    assert load_dataset(array).equals(load_dataset(_write(tmp_path, tiny_rows(), "data.jsonl")))
    lines = [json.dumps(r) for r in records[:3]] + ['{"text": "cut off", "label":', ""]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(
        DataError, match=r"Line 4 of .*broken\.jsonl is not JSON: Expecting value\. Expected JSON"
    ):
        read_table(broken)
    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps(["a text", "another"]), encoding="utf-8")
    with pytest.raises(DataError, match=r"2 record\(s\) of .* are not objects \(the first: a str\)"):
        read_table(strings)


def test_a_json_object_wrapping_the_records_loads_its_array(tmp_path: Path) -> None:
    records = tiny_rows().to_dict(orient="records")
    wrapped = tmp_path / "export.json"
    wrapped.write_text(json.dumps({"version": 2, "data": records}, indent=2), encoding="utf-8")
    assert load_dataset(wrapped).equals(load_dataset(_write(tmp_path, tiny_rows(), "data.jsonl")))
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(records[0]) + "\n", encoding="utf-8")  # JSON lines of one line
    assert read_table(one).to_dict(orient="records") == [records[0]]
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"train": records, "test": records[:2]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"several arrays of records \('train', 'test'\); which holds"):
        read_table(two)


def test_custom_column_names(tmp_path: Path) -> None:
    raw = tiny_rows().rename(columns={"text": "body", "label": "intent"})
    frame = load_dataset(_write(tmp_path, raw), text_column="body", label_column="intent")
    assert set(frame["label"]) == {"refund", "password", "shipping"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"Data file not found: .*nope\.csv\. Expected a CSV, TSV, JSONL or Parquet"
    ):
        load_dataset(tmp_path / "nope.csv")


def test_missing_column_lists_the_columns_found(tmp_path: Path) -> None:
    path = _write(tmp_path, tiny_rows().rename(columns={"text": "body"}))
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert "Column(s) ['text'] not found" in str(err.value)
    assert "Found columns: ['body', 'label']" in str(err.value)
    assert "--text-column" in str(err.value)


def test_empty_texts_are_counted_with_their_rows(tmp_path: Path) -> None:
    frame = tiny_rows()
    frame.loc[[2, 5], "text"] = ["", "   "]
    with pytest.raises(DataError, match=r"2 empty or whitespace-only text\(s\) .*data rows 3, 6;"):
        load_dataset(_write(tmp_path, frame))


def test_label_with_one_example(tmp_path: Path) -> None:
    frame = pd.concat([tiny_rows(), pd.DataFrame([{"text": "a lonely text", "label": "rare"}])])
    with pytest.raises(
        DataError,
        match=r"Label\(s\) with fewer than 2 examples in .*: 'rare' \(1\)\. Expected at least 2",
    ):
        prepare_splits(_write(tmp_path, frame))


def test_a_label_with_one_example_is_learnt_when_a_test_file_is_given(tmp_path: Path) -> None:
    # A retrain gives production's test split as the test file: a new label's first feedback
    # row must be trainable, not refused.
    frame = pd.concat([tiny_rows(), pd.DataFrame([{"text": "a lonely text", "label": "rare"}])])
    test = tmp_path / "test.csv"
    tiny_rows().head(6).to_csv(test, index=False)
    splits = prepare_splits(_write(tmp_path, frame), test_file=test)
    assert "a lonely text" in set(splits.train["text"])
    assert "rare" in splits.labels


def test_single_class(tmp_path: Path) -> None:
    frame = tiny_rows().assign(label="refund")
    with pytest.raises(
        DataError,
        match=r"Found a single label \('refund', 36 rows\).*Expected at least 2 distinct labels",
    ):
        prepare_splits(_write(tmp_path, frame))


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nhello,a\ncaf\xe9 au lait,b\n".encode("latin-1"))
    with pytest.raises(
        DataError, match=r"is not valid UTF-8: byte 0xe9 at offset 22 \(line 3\)\. Expected UTF-8"
    ):
        load_dataset(path)


def test_a_utf_16_file_is_named_as_such_with_the_conversion_that_fixes_it(tmp_path: Path) -> None:
    path = tmp_path / "unicode.tsv"  # Excel's "Unicode Text": UTF-16 with a byte-order mark, tabs
    path.write_bytes("text\tlabel\nhello\ta\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"is UTF-16 .* not UTF-8\. .*`iconv -f utf-16 -t utf-8 unicode\.tsv"):
        load_dataset(path)


def test_a_folder_where_a_table_is_expected_is_named_a_folder(tmp_path: Path) -> None:
    (tmp_path / "test" / "refund").mkdir(parents=True)
    with pytest.raises(DataError, match=r"test is a folder; expected a CSV, TSV, JSONL or Parquet file here"):
        load_dataset(tmp_path / "test")


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"Unsupported data file type '\.xlsx'.* Hint: save it as CSV UTF-8"):
        load_dataset(path)
    path = tmp_path / "export.txt"
    path.write_text("text,label\nhello,a\n")
    with pytest.raises(DataError, match=r"'\.txt'.* Hint: if it holds comma- or tab-separated columns"):
        load_dataset(path)


def test_duplicates_and_overlap_are_reported_not_fatal(tmp_path: Path) -> None:
    frame = pd.concat([tiny_rows(), tiny_rows().head(4)])
    test = tiny_rows(copies=1)
    splits = prepare_splits(_write(tmp_path, frame), test_file=_write(tmp_path, test, "test.csv"))
    assert splits.report.duplicate_rows == 4
    assert splits.report.train_test_overlap > 0
    assert any("duplicate rows" in w for w in splits.report.warnings())
    assert len(splits.test) == len(test)


def test_test_file_with_unknown_labels(tmp_path: Path) -> None:
    test = pd.DataFrame([{"text": "something new", "label": "new_intent"}])
    with pytest.raises(DataError, match=r"label\(s\) absent from the training data: \['new_intent'\]"):
        prepare_splits(_write(tmp_path, tiny_rows()), test_file=_write(tmp_path, test, "test.csv"))


def test_stratified_split_keeps_every_label_and_is_seeded() -> None:
    frame = tiny_rows()
    train, val, test = stratified_split(frame, (0.2, 0.25), seed=1)
    assert len(train) + len(val) + len(test) == len(frame)
    for part in (train, val, test):
        assert set(part["label"]) == {"refund", "password", "shipping"}
    again = stratified_split(frame, (0.2, 0.25), seed=1)
    assert train.equals(again[0]) and test.equals(again[2])
    assert not train.equals(stratified_split(frame, (0.2, 0.25), seed=2)[0])


def test_split_keeps_a_training_row_for_tiny_labels() -> None:
    frame = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["x", "x", "y", "y"]})
    train, _, _ = stratified_split(frame, (0.4, 0.4), seed=0)
    assert set(train["label"]) == {"x", "y"}


def test_fingerprint_ignores_row_order_and_whitespace_but_not_content() -> None:
    frame = tiny_rows()
    shuffled = frame.sample(frac=1.0, random_state=0)
    spaced = frame.assign(text=frame["text"] + "  ")
    assert fingerprint_rows([frame]) == fingerprint_rows([shuffled]) == fingerprint_rows([spaced])
    changed = frame.copy()
    changed.loc[0, "label"] = "password"
    assert fingerprint_rows([frame]) != fingerprint_rows([changed])
    assert fingerprint_rows([frame]).startswith("sha256:")


def test_labels_written_two_ways_are_found_by_case_and_separators() -> None:
    from training.label_variants import describe_label_variants, find_label_variants, matching_label

    labels = [
        "account_locked",
        "Account Locked",
        "account-locked",
        "refund",
        "REFUND",
        "shipping",
        "ship ping",
    ]
    # Separators between words count as one; their absence does not ("ship ping" is not "shipping").
    assert find_label_variants(labels) == [
        ["account_locked", "Account Locked", "account-locked"],
        ["refund", "REFUND"],
    ]
    assert matching_label("Refund", ["refund", "shipping"]) == "refund"
    assert matching_label("refund", ["refund"]) is None  # the label itself is no other spelling
    assert describe_label_variants({"refund": 30, "shipping": 20}) == ""


def test_only_labels_made_of_other_labels_count_as_joined() -> None:
    from training.label_combinations import find_label_combinations

    labels = ["billing", "Refund", "billing;refund", "billing | shipping", "hardware/printer", "hardware"]
    # 'shipping' is no label of its own; '/' names a class of a hierarchy, not two tags.
    assert find_label_combinations(labels) == {"billing;refund": ["billing", "Refund"]}
