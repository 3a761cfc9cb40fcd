"""One image from bytes to the tensor a vision model reads: decode, check, convert, resize, scale.

Training, evaluation, the ONNX parity check and the service all call :func:`decode_image` and
:func:`to_pixels`, so an image is preprocessed identically wherever it is classified.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

from training.errors import DataError

FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")  # what Pillow decodes that cameras and scanners write
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(DataError):
    """An image cannot be used; the message names the image and the problem.

    ``reason`` is one of ``not_an_image``, ``unsupported_format``, ``corrupt``, ``too_small``,
    ``too_many_pixels`` (the service maps it to an HTTP status).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    """What an acceptable image is; beyond them an image is rejected, never silently shrunk."""

    min_side: int = 32  # pixels; smaller images carry too little to classify
    max_pixels: int = 40_000_000  # width x height; beyond it a file is treated as a decompression bomb


@dataclass(frozen=True)
class Preprocessing:
    """How a model's input is made from an RGB image; saved with the model."""

    size: int = 224  # the square side the image is resized to (whole image, no crop)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per channel, on [0, 1] pixels
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)  # 0.5/0.5 scales pixels to [-1, 1]


def decode_image(data: bytes, source: str, limits: ImageLimits | None = None) -> Image.Image:
    """Decode image bytes into an 8-bit RGB Pillow image, EXIF orientation applied.

    Grayscale, palette, 16-bit, RGBA (composited on white) and CMYK images are converted.

    Args:
        data: the file's bytes.
        source: how to name the image in an error (a path or a request position).
        limits: minimum side and maximum pixel count.

    Raises:
        ImageError: not an image, an unsupported format, truncated or corrupt, too small, or more
            pixels than ``limits.max_pixels``.
    """
    limits = limits or ImageLimits()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_header(image, source, limits)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(source, limits, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"{source} is not an image Refit can read ({len(data):,} bytes, starting {data[:8]!r}). "
            f"Expected one of {', '.join(FORMATS)}.",
            "not_an_image",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            f"{source} is truncated or corrupt: {exc}. Expected a complete image file; re-export it.",
            "corrupt",
        ) from exc
    return to_rgb(ImageOps.exif_transpose(image))


def _check_header(image: Image.Image, source: str, limits: ImageLimits) -> None:
    fmt = getattr(image, "format", None)
    if fmt not in FORMATS:
        raise ImageError(
            f"{source} is a {fmt} image; expected one of {', '.join(FORMATS)}.", "unsupported_format"
        )
    width, height = getattr(image, "size", (0, 0))
    if width * height > limits.max_pixels:
        raise _too_many_pixels(source, limits, f"{width}x{height}")
    if min(width, height) < limits.min_side:
        raise ImageError(
            f"{source} is {width}x{height} pixels; expected at least {limits.min_side} pixels a side.",
            "too_small",
        )


def _too_many_pixels(source: str, limits: ImageLimits, found: str) -> ImageError:
    return ImageError(
        f"{source} has too many pixels ({found}); expected at most {limits.max_pixels:,} "
        "(a decompression bomb guard). Hint: downscale the image, or raise max_image_pixels.",
        "too_many_pixels",
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode: 16/32-bit scaled to 8 bits, alpha composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(to_8_bit(array, image.mode), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


def to_8_bit(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit or float image to 0-255 by the range its type can hold.

    By the type's range, not the image's own maximum: a uniformly dark 16-bit frame stays dark.
    Float images are taken as 0-1 when they fit it; 32-bit integer images as 16-bit when they
    fit that (Pillow opens 16-bit PNGs as 32-bit).
    """
    top = array.max(initial=0.0)
    if mode == "F":
        scale = 255.0 if top <= 1.0 else 1.0
    elif mode.startswith("I;16") or top <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / top
    return np.asarray((array * scale).round().clip(0, 255), dtype=np.uint8)


def to_pixels(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """Resize the whole image (no crop: a defect may sit at an edge) and normalise: (3, size, size)."""
    size = preprocessing.size
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / 255.0  # (size, size, 3)
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    return np.ascontiguousarray(((array - mean) / std).transpose(2, 0, 1))


DESCRIPTOR_SIDE = 128  # descriptors are computed at one size, so images of any size compare
IMAGE_DESCRIPTORS = ("brightness", "contrast", "sharpness", "saturation", "width", "height", "aspect_ratio")


def describe_image(image: Image.Image) -> dict[str, float]:
    """What the drift check reads of an image: brightness, contrast, sharpness, saturation and size.

    Brightness and contrast are the mean and standard deviation of the grey levels (0-1);
    sharpness the variance of the Laplacian of the grey image at 128x128 (a blur or a dirty lens
    lowers it); saturation the mean HSV saturation (0-1).
    """
    width, height = image.size
    grey = np.asarray(image.convert("L").resize((DESCRIPTOR_SIDE, DESCRIPTOR_SIDE)), dtype=np.float32) / 255.0
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    hsv = np.asarray(image.resize((DESCRIPTOR_SIDE, DESCRIPTOR_SIDE)).convert("HSV"), dtype=np.float32)
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "sharpness": float(laplacian.var()),
        "saturation": float(hsv[..., 1].mean() / 255.0),
        "width": float(width),
        "height": float(height),
        "aspect_ratio": float(width / height),
    }


def thumbnail_uri(data: bytes, side: int = 96) -> str:
    """A small PNG of an image as a ``data:`` URI, for self-contained HTML reports."""
    import base64

    image = decode_image(data, "thumbnail")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def augment_image(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random view of an inspection image: flips, a small rotation and crop, brightness and contrast.

    Defects have no preferred orientation, so both flips are fair. The rotation (within 10
    degrees) turns a mirror-padded copy and cuts the original frame back out, and the crop keeps
    at least 90% of each side: black corners, or an edge cut away, would look like the broken
    edge that is itself a defect class in inspection data.
    """
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    width, height = image.size
    pad_x, pad_y = width // 5, height // 5
    mirrored = np.pad(np.asarray(image), ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="reflect")
    padded = Image.fromarray(mirrored)
    turned = padded.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BILINEAR)
    scale = rng.uniform(0.9, 1.0, size=2)
    crop_w, crop_h = max(1, int(width * scale[0])), max(1, int(height * scale[1]))
    left = pad_x + int(rng.integers(0, width - crop_w + 1))
    top = pad_y + int(rng.integers(0, height - crop_h + 1))
    image = turned.crop((left, top, left + crop_w, top + crop_h))
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
    return ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.8, 1.2)))
