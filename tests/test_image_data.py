"""Image data: every bad-image class by its message, conversions, folders and CSVs, duplicates."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from training.blobs import BlobStore
from training.config import TrainingConfig
from training.data import fingerprint_rows
from training.errors import DataError
from training.image_data import list_image_folder, list_image_table, load_image_dataset
from training.images import ImageError, ImageLimits, Preprocessing, decode_image, to_pixels
from training.modality import ImageModality, detect_modality
from training.pipeline import load_splits


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _noisy(side: int = 40) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8))


def _grey(side: int = 40, value: int = 100, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (side, side), value if mode in ("L", "I;16", "P") else (value,) * len(mode))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b"text,label\nhello,a\n",
            r"image\.bin is not an image Refit can read \(19 bytes, starting b'text,lab'\)",
        ),
        (_encode(_noisy())[:2000], r"image\.bin is truncated or corrupt: .*Expected a complete image file"),
        (_encode(_grey(side=16)), r"image\.bin is 16x16 pixels; expected at least 32 pixels a side"),
        (_encode(_grey(), "GIF"), r"image\.bin is a GIF image; expected one of JPEG, PNG, BMP, TIFF, WEBP"),
        (_encode(_grey(side=300)), r"image\.bin has too many pixels \(300x300\); expected at most 50,000"),
    ],
    ids=["not-an-image", "truncated", "too-small", "unsupported-format", "decompression-bomb"],
)
def test_a_bad_image_is_rejected_by_name(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_image(data, "image.bin", ImageLimits(min_side=32, max_pixels=50_000))


def test_pillows_own_bomb_guard_becomes_the_same_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns above this, errors above 2x
    with pytest.raises(ImageError, match=r"has too many pixels"):
        decode_image(_encode(_grey(side=40)), "big.png")


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (_grey(mode="L"), "PNG"),
        (Image.new("RGBA", (40, 40), (100, 100, 100, 255)), "PNG"),
        (_grey(mode="RGB").convert("P"), "PNG"),
        (Image.fromarray(np.full((40, 40), 100 * 257, dtype=np.uint16)), "PNG"),
        (Image.new("CMYK", (40, 40), (0, 0, 0, 155)), "JPEG"),
        (_grey(), "BMP"),
        (_grey(), "TIFF"),
    ],
    ids=["grayscale", "rgba", "palette", "16-bit", "cmyk", "bmp", "tiff"],
)
def test_every_mode_becomes_8_bit_rgb(image: Image.Image, fmt: str) -> None:
    decoded = decode_image(_encode(image, fmt), "x")
    assert decoded.mode == "RGB"
    assert decoded.size == (40, 40)
    assert 90 <= np.asarray(decoded).mean() <= 110


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (60, 40), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(_encode(image, "JPEG", exif=exif), "phone.jpg")
    assert decoded.size == (40, 60)


def test_pixels_are_scaled_to_minus_one_one_without_a_crop() -> None:
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    image.paste((255, 255, 255), (70, 0, 80, 40))  # a white band at the right edge
    pixels = to_pixels(image, Preprocessing(size=32))
    assert pixels.shape == (3, 32, 32)
    assert pixels.min() == pytest.approx(-1.0) and pixels.max() == pytest.approx(1.0)
    assert pixels[:, :, -1].mean() > 0.9  # the edge is kept


def test_a_folder_of_class_folders_loads_and_stores_each_image(surfaces: Path, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    frame = load_image_dataset(surfaces, store)
    assert sorted(frame["label"].unique()) == ["crack", "free", "scratch", "spot"]
    assert len(frame) == 40
    first = frame.iloc[0]
    assert store.read(first["image"]) == Path(first["path"]).read_bytes()


def test_a_csv_keeps_other_columns_as_metadata(surfaces: Path, tmp_path: Path) -> None:
    rows = [
        {"file": str(p.relative_to(surfaces)), "defect": p.parent.name, "lighting": f"exp{i % 3}"}
        for i, p in enumerate(sorted(surfaces.rglob("*.png")))
    ]
    csv = surfaces / "manifest.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    try:
        config = TrainingConfig(image_column="file", label_column="defect")
        assert detect_modality(csv, config) == "image"
        splits = load_splits(csv, config, ImageModality(config, BlobStore(tmp_path / "blobs")))
    finally:
        csv.unlink()
    assert set(splits.train["meta_lighting"]) == {"exp0", "exp1", "exp2"}
    assert splits.fingerprint.startswith("sha256:")


def test_a_json_manifest_of_tag_lists_reads_one_label_a_row(surfaces: Path) -> None:
    images = sorted(surfaces.rglob("*.png"))[:4]
    manifest = surfaces.parent / "tags.jsonl"
    lines = [json.dumps({"path": str(p), "tags": [p.parent.name]}) for p in images]
    manifest.write_text("\n".join(lines) + "\n")
    assert list(list_image_table(manifest, "path", "tags")["label"]) == [p.parent.name for p in images]
    lines[1] = json.dumps({"path": str(images[1]), "tags": ["crack", "spot"]})
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"1 row\(s\) of .* carry several labels in 'tags' \(data rows 2;"):
        list_image_table(manifest, "path", "tags")


def test_a_non_image_file_in_a_class_folder_is_named(surfaces: Path, tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "free").mkdir(parents=True)
    (root / "scratch").mkdir()
    (root / "free" / "notes.txt").write_text("not an image")
    (root / "scratch" / "ok.png").write_bytes(_encode(_grey()))
    # What Windows and macOS leave in folders is skipped, not counted among the strays.
    for name in ("Thumbs.db", "desktop.ini", ".DS_Store"):
        (root / "scratch" / name).write_bytes(b"\x00metadata")
    with pytest.raises(
        DataError, match=r"1 file\(s\) in .* are not images of a supported type: [^,]*notes\.txt\. Expected"
    ):
        load_image_dataset(root, BlobStore(tmp_path / "blobs"))
    (root / "free" / "notes.txt").unlink()
    assert list_image_folder(root)["path"].map(lambda p: Path(p).name).tolist() == ["ok.png"]


def test_every_unusable_image_is_listed_at_once(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for label in ("free", "scratch"):
        (root / label).mkdir(parents=True)
        (root / label / "good.png").write_bytes(_encode(_grey(value=50 if label == "free" else 150)))
    (root / "free" / "cut.png").write_bytes(_encode(_noisy())[:2000])
    (root / "scratch" / "tiny.png").write_bytes(_encode(_grey(side=8)))
    with pytest.raises(DataError, match=r"2 of 4 image\(s\) cannot be used:") as caught:
        load_image_dataset(root, BlobStore(tmp_path / "blobs"))
    assert "cut.png is truncated or corrupt" in str(caught.value)
    assert "tiny.png is 8x8 pixels; expected at least 32" in str(caught.value)


def test_the_same_image_twice_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for label in ("free", "scratch"):
        (root / label).mkdir(parents=True)
        (root / label / "a.png").write_bytes(_encode(_grey()))
    with pytest.raises(
        DataError, match=r"1 image\(s\) occur more than once .*free/a\.png = .*scratch/a\.png"
    ):
        load_image_dataset(root, BlobStore(tmp_path / "blobs"))


def test_a_test_image_that_is_also_a_training_image_is_refused(surfaces: Path, tmp_path: Path) -> None:
    test = tmp_path / "test"
    (test / "spot").mkdir(parents=True)
    shared = next((surfaces / "spot").iterdir())
    (test / "spot" / "copy.png").write_bytes(shared.read_bytes())
    config = TrainingConfig(test_file=test)
    modality = ImageModality(config, BlobStore(tmp_path / "blobs"))
    with pytest.raises(
        DataError, match=r"1 test image\(s\) in .* are also in .* \(same bytes\): .*copy\.png = "
    ):
        load_splits(surfaces, config, modality)


def test_the_fingerprint_hashes_image_bytes(surfaces: Path, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    frame = load_image_dataset(surfaces, store)
    changed = tmp_path / "changed"
    import shutil

    shutil.copytree(surfaces, changed)
    target = next((changed / "free").iterdir())
    image = Image.open(target).convert("RGB")
    image.putpixel((0, 0), (0, 0, 0))
    image.save(target)
    other = load_image_dataset(changed, store)
    assert fingerprint_rows([frame], "image") != fingerprint_rows([other], "image")
    assert fingerprint_rows([frame], "image") == fingerprint_rows([frame.sample(frac=1.0)], "image")
