"""Reading a data file as it is: CSV or TSV, JSON (lines or an array of objects) or Parquet.

Every column comes back as found (CSV cells as strings); a file that cannot be read is refused
with what was expected and where it went wrong.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pandas as pd

from training.errors import DataError

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
# Comma first, so that a header that splits on it reads as before; then what spreadsheets write
# where the decimal mark is a comma (Excel's semicolon), and the other common separators.
CSV_DELIMITERS = (",", ";", "\t", "|")


def _decode_error(path: Path) -> DataError:
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return DataError(
            f"{path} is UTF-16 (its byte-order mark says so: what Excel saves as Unicode Text), "
            "not UTF-8. Expected UTF-8 text. Hint: re-save the file as UTF-8, e.g. "
            f"`iconv -f utf-16 -t utf-8 {path.name} > fixed{path.suffix}`."
        )
    # pandas reports offsets within its read buffer; decoding the whole file gives the real one.
    try:
        raw.decode("utf-8")
        start = 0
    except UnicodeDecodeError as exc:
        start = exc.start
    line = raw[:start].count(b"\n") + 1
    return DataError(
        f"{path} is not valid UTF-8: byte 0x{raw[start]:02x} at offset {start} (line {line}). "
        "Expected UTF-8 text. Hint: re-save the file as UTF-8, e.g. "
        f"`iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`."
    )


def detect_delimiter(path: Path) -> str:
    """The separator of a CSV file: the first of :data:`CSV_DELIMITERS` that splits its header
    row into several columns (quotes respected), else a comma (a file of one column).

    Raises:
        UnicodeDecodeError: the header row is not UTF-8.
    """
    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = handle.readline()
    for delimiter in CSV_DELIMITERS:
        if len(next(csv.reader([header], delimiter=delimiter), [])) > 1:
            return delimiter
    return ","


def read_json_records(path: Path) -> pd.DataFrame:
    """A JSON array of objects, an object wrapping one such array, or JSON lines (one object per
    line; blank lines skipped), as a frame.

    Raises:
        DataError: text that is not JSON (named by its line), a record that is not an object, or
            an object wrapping several arrays of records.
        UnicodeDecodeError: the file is not UTF-8.
    """
    text = path.read_text(encoding="utf-8-sig")
    expected = "Expected JSON lines (one object per line) or a JSON array of objects."
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}. {expected}") from exc
    elif isinstance(document := _parse_whole(text), dict):
        records = _unwrap_records(document, path, expected)
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"Line {number} of {path} is not JSON: {exc.msg}. {expected}") from exc
    others = [type(r).__name__ for r in records if not isinstance(r, dict)]
    if others:
        raise DataError(
            f"{len(others)} record(s) of {path} are not objects (the first: a {others[0]}). {expected}"
        )
    return pd.DataFrame.from_records(records)


def _parse_whole(text: str) -> object:
    """The file as one JSON document, or None when it is not one (JSON lines, or broken)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _unwrap_records(document: dict[str, object], path: Path, expected: str) -> list[object]:
    """The rows of a file that is one object: the one array of objects it wraps (exports write
    ``{"data": [...]}``), else the object itself as the only record (JSON lines of one line).

    Raises:
        DataError: it wraps several arrays of objects, and which holds the rows is a guess.
    """
    arrays = {
        key: value
        for key, value in document.items()
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value)
    }
    if len(arrays) > 1:
        raise DataError(
            f"{path} is one object holding several arrays of records ({', '.join(map(repr, arrays))}); "
            f"which holds the rows is not clear. {expected}"
        )
    return next(iter(arrays.values()), [document])


# What a spreadsheet or a text export needs to become a file Refit reads.
_SPREADSHEET = (
    " Hint: save it as CSV UTF-8 (Excel: File > Save As > CSV UTF-8; LibreOffice: Save As > Text CSV)."
)
_SUFFIX_HINTS = {
    ".xlsx": _SPREADSHEET,
    ".xls": _SPREADSHEET,
    ".xlsm": _SPREADSHEET,
    ".ods": _SPREADSHEET,
    ".numbers": " Hint: export it as CSV (Numbers: File > Export To > CSV, Unicode UTF-8).",
    ".txt": " Hint: if it holds comma- or tab-separated columns with a header row, name it .csv or .tsv.",
    "": " Hint: name it by its format (.csv, .tsv, .jsonl, .json or .parquet).",
}


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (comma, semicolon, tab or ``|`` separated, as its header row shows), TSV, JSON
    (lines, an array of objects, or an object wrapping one) or Parquet file with every column as found.

    Raises:
        DataError: the file is missing, of an unsupported type, not UTF-8, or unparsable.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"{path} is a folder; expected a CSV, TSV, JSONL or Parquet file here. A folder of class "
            "folders is read as images when the training data is one (the training data decides the "
            "modality)."
        )
    if not path.is_file():
        raise DataError(
            f"Data file not found: {path}. Expected a CSV, TSV, JSONL or Parquet file. "
            "Hint: check the path (relative paths start from the current directory)."
        )
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"Unsupported data file type '{suffix}' for {path}; expected one of {SUPPORTED_SUFFIXES}."
            + _SUFFIX_HINTS.get(suffix, "")
        )
    try:
        if suffix in (".csv", ".tsv"):
            delimiter = "\t" if suffix == ".tsv" else detect_delimiter(path)
            if delimiter != ",":
                logger.info("%s: columns separated by %r (its header row)", path, delimiter)
            return pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False, encoding="utf-8")
        if suffix in (".jsonl", ".json"):
            return read_json_records(path)
        return pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise _decode_error(path) from exc
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise DataError(f"Could not parse {path} as {suffix[1:].upper()}: {exc}") from exc
