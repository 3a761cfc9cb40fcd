"""Labelled images: a folder of class folders or a CSV of paths, checked image by image.

Every image is decoded once when loaded, so a bad file stops training before any model work with
an error that names it; each is then stored by content hash (:mod:`training.blobs`), which is
what a version's splits refer to and what the data fingerprint hashes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from training.blobs import BlobStore, hash_bytes
from training.errors import DataError
from training.groups import GROUP, read_groups
from training.images import SUFFIXES, ImageError, ImageLimits, decode_image
from training.label_combinations import read_single_labels
from training.progress import track_progress
from training.tables import read_table

logger = logging.getLogger(__name__)

_LISTED = 5
# What file managers leave in folders (thumbnail caches, folder settings): never data.
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini"})
# Names datasets give their splits (`data/train/<label>/...`), never labels of their own.
SPLIT_NAMES = frozenset(
    {"train", "training", "test", "testing", "val", "valid", "validation", "dev", "eval", "holdout"}
)


def list_image_folder(root: Path) -> pd.DataFrame:
    """``root/<label>/<image>`` as a frame of ``path`` and ``label`` (hidden files and file
    managers' thumbnail caches and folder settings skipped).

    Raises:
        DataError: no class folders, a file of another type, or images outside class folders.
    """
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not folders or loose:
        raise DataError(
            f"{root} is not a folder of class folders: found {len(folders)} folder(s) and "
            f"{len(loose)} image(s) directly inside ({', '.join(loose[:_LISTED])}). Expected "
            f"{root}/<label>/<image>, one folder per label, or a CSV with path and label columns."
        )
    check_not_split_folders(root, folders)
    rows: list[tuple[str, str]] = []
    other: list[tuple[str, str]] = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or path.name.lower() in SYSTEM_FILES:
                continue
            (rows if path.suffix.lower() in SUFFIXES else other).append((str(path), folder.name))
    if other:
        shown = ", ".join(p for p, _ in other[:_LISTED])
        raise DataError(
            f"{len(other)} file(s) in {root} are not images of a supported type: {shown}. "
            f"Expected suffixes {', '.join(SUFFIXES)}. Hint: move other files out of the class folders."
        )
    return pd.DataFrame(rows, columns=["path", "label"])


def check_not_split_folders(root: Path, folders: list[Path]) -> None:
    """Refuse ``root/train/<label>/...`` beside ``root/test/<label>/...``: read as class folders,
    the splits would be trained as the labels (a model of `test` against `train`); and a split
    folder among the class folders (see :func:`check_no_split_beside_classes`).

    Raises:
        DataError: every folder is named as a split and holds folders of its own, or one split
            folder holds folders named as the class folders beside it.
    """
    names = [f.name for f in folders]
    check_no_split_beside_classes(root, folders)
    if not all(n.lower() in SPLIT_NAMES for n in names):
        return
    if not all(any(p.is_dir() and not p.name.startswith(".") for p in f.iterdir()) for f in folders):
        return
    test = next((n for n in names if n.lower() in ("test", "testing", "holdout", "eval")), None)
    train = next((n for n in names if n.lower() in ("train", "training")), None)
    hint = (
        f"refit train {root / train} --test-file {root / test}"
        if train and test
        else f"refit train {root / (train or names[0])}"
    )
    others = [n for n in names if n not in (train, test)]
    rest = (
        f" Refit holds out its own validation rows from the training data; to train on "
        f"{', '.join(others)} too, move its images into the same class folders of {train or names[0]}."
        if others
        else ""
    )
    raise DataError(
        f"{root} holds split folders ({', '.join(names)}), each a folder of class folders: read as "
        f"{root}/<label>/<image>, {_join(names)} would be trained as the labels. "
        f"Train on the training split and test on the test split: {hint}.{rest}"
    )


def check_no_split_beside_classes(root: Path, folders: list[Path]) -> None:
    """Refuse a split folder among class folders (``root/cat``, ``root/dog``, ``root/test/cat``):
    it would be trained as a label of its own.

    Raises:
        DataError: a folder named as a split holds folders named as the others.
    """
    labels = {f.name for f in folders}
    for folder in (f for f in folders if f.name.lower() in SPLIT_NAMES):
        inside = {p.name for p in folder.iterdir() if p.is_dir()}
        shared = sorted(inside & labels)
        if shared and folder.name not in inside:
            raise DataError(
                f"{folder} holds class folders of its own ({', '.join(shared)}): read as "
                f"{root}/<label>/<image>, {folder.name!r} would be trained as a label. Move it out of "
                f"{root}; a test split is passed as the test data: refit train {root} --test-file "
                "<its new path>."
            )


def _join(names: list[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def list_image_table(csv: Path, image_column: str, label_column: str) -> pd.DataFrame:
    """A CSV (or JSONL/Parquet) of image paths relative to the file: ``path``, ``label`` and the
    other columns as metadata.

    Raises:
        DataError: a missing column or empty labels.
    """
    table = read_table(csv)
    missing = [c for c in (image_column, label_column) if c not in table.columns]
    if missing:
        raise DataError(
            f"Column(s) {missing} not found in {csv}. Found columns: {list(table.columns)}. "
            "Hint: set image_column / label_column (--set image_column=... / --label-column)."
        )
    metadata = table.drop(columns=[image_column, label_column]).fillna("").astype(str)
    frame = pd.DataFrame(
        {
            "path": [str((csv.parent / str(p)).resolve()) for p in table[image_column]],
            "label": read_single_labels(table[label_column], csv, label_column)
            .astype("string")
            .fillna("")
            .str.strip()
            .astype(str),
        }
    )
    unlabelled = frame.index[frame["label"].eq("")].tolist()
    if unlabelled:
        raise DataError(
            f"{len(unlabelled)} row(s) without a label in {csv} (data rows "
            f"{', '.join(str(i + 1) for i in unlabelled[:_LISTED])}). Expected a label in every row."
        )
    return pd.concat([frame, metadata.add_prefix("meta_")], axis=1)


def load_image_dataset(
    path: Path,
    store: BlobStore,
    *,
    image_column: str = "path",
    label_column: str = "label",
    limits: ImageLimits | None = None,
) -> pd.DataFrame:
    """Load, check and store labelled images: a frame of ``image`` (content key), ``label``,
    ``path`` and ``meta_*`` columns.

    Raises:
        DataError: a missing file, unreadable, truncated, too small or too large images, an
            unsupported format, or the same image twice; the message names the files.
    """
    path = Path(path)
    if path.is_dir():
        frame = list_image_folder(path)
    elif path.is_file():
        frame = list_image_table(path, image_column, label_column)
    else:
        raise DataError(f"Image data not found: {path}. Expected a folder of class folders or a CSV.")
    if frame.empty:
        raise DataError(f"No images found in {path}.")
    frame.insert(0, "image", _store_images(frame["path"].tolist(), store, limits or ImageLimits()))
    _reject_duplicates(frame, str(path))
    return frame


def attach_image_groups(
    frame: pd.DataFrame, group_column: str | None, source: Path | str, *, required: bool
) -> pd.DataFrame:
    """``frame`` with each image's ``group`` read from the table's ``group_column`` (kept as the
    metadata column ``meta_<group_column>``); unchanged without a group column.

    Raises:
        DataError: ``required`` and the data has no such column (a folder of class folders has none).
    """
    if group_column is None:
        return frame
    if f"meta_{group_column}" in frame.columns:
        return frame.assign(**{GROUP: read_groups(frame[f"meta_{group_column}"])})
    if not required:
        return frame
    found = [c.removeprefix("meta_") for c in frame.columns if c.startswith("meta_")]
    raise DataError(
        f"group_column {group_column!r} not found in {source}. Found columns besides the image and "
        f"label: {found}. Expected a table listing the images with a {group_column!r} column (a "
        "folder of class folders has no columns)."
    )


def load_unlabelled_images(
    path: Path, store: BlobStore, *, image_column: str = "path", limits: ImageLimits | None = None
) -> pd.DataFrame:
    """Load, check and store unlabelled images (a domain to adapt to): a folder of images (in
    any subfolders) or a table of paths relative to it; a frame of ``image`` and ``path``, each
    image once (traffic repeats images; a repeat is not another observation of the domain).

    Raises:
        DataError: no images, a missing column or file, or an image that cannot be used.
    """
    path = Path(path)
    if path.is_dir():
        paths = [str(p) for p in sorted(path.rglob("*"))
                 if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES]  # fmt: skip
    elif path.is_file():
        table = read_table(path)
        if image_column not in table.columns:
            raise DataError(
                f"Column {image_column!r} not found in {path}. Found columns: {list(table.columns)}. "
                "Hint: set image_column (--set image_column=...)."
            )
        paths = [str((path.parent / str(p)).resolve()) for p in table[image_column]]
    else:
        raise DataError(f"Images not found: {path}. Expected a folder of images or a CSV of paths.")
    if not paths:
        raise DataError(f"No images found in {path}; expected files ending {', '.join(SUFFIXES)}.")
    frame = pd.DataFrame({"path": paths})
    frame.insert(0, "image", _store_images(paths, store, limits or ImageLimits()))
    return frame.drop_duplicates("image").reset_index(drop=True)


def _store_images(paths: list[str], store: BlobStore, limits: ImageLimits) -> list[str]:
    """Decode every image (the whole check) and store its bytes; one error lists every bad file."""
    keys, problems = [], []
    for name in track_progress(paths, "checking images", total=len(paths), unit="images"):
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            problems.append(f"{name}: cannot be read ({exc.strerror or exc})")
            keys.append("")
            continue
        try:
            decode_image(data, name, limits)
        except ImageError as exc:
            problems.append(str(exc))
        keys.append(store.put(data) if not problems else hash_bytes(data))
    if problems:
        listed = "\n  ".join(problems[:_LISTED])
        more = f"\n  ... and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
        raise DataError(f"{len(problems)} of {len(paths)} image(s) cannot be used:\n  {listed}{more}")
    return keys


def _reject_duplicates(frame: pd.DataFrame, source: str) -> None:
    repeated = frame[frame["image"].duplicated(keep=False)]
    if repeated.empty:
        return
    groups = [" = ".join(group["path"]) for _, group in repeated.groupby("image", sort=False)]
    raise DataError(
        f"{len(groups)} image(s) occur more than once in {source} (same bytes): "
        f"{'; '.join(groups[:_LISTED])}. Expected each image once, so that no image is both "
        "trained and tested on. Hint: delete the copies."
    )


def reject_shared_images(data: pd.DataFrame, test: pd.DataFrame, source: str, test_source: str) -> None:
    """Raise when a test image is also a training image (same bytes), naming both files."""
    by_key = dict(zip(data["image"], data["path"], strict=True))
    shared = [f"{p} = {by_key[k]}" for k, p in zip(test["image"], test["path"], strict=True) if k in by_key]
    if shared:
        raise DataError(
            f"{len(shared)} test image(s) in {test_source} are also in {source} (same bytes): "
            f"{'; '.join(shared[:_LISTED])}. Expected disjoint training and test images; a test "
            "image the model trained on inflates every metric. Hint: remove them from one side."
        )
