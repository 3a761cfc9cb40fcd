"""Image requests: JSON with base64 strings or multipart uploads, checked before any batch.

Every image of a request is decoded and checked here, in a thread beside the event loop, so a
bad image is answered with a 4xx that names it and never reaches (and fails) a batch that other
requests share. What passes goes on as one canonical JSON body, ``{"images": [base64, ...]}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from training.images import ImageError, ImageLimits, decode_image

IMAGES_FIELD = "images"
# The HTTP status for each reason an image is refused.
REASON_STATUS = {
    "not_an_image": 422,
    "corrupt": 422,
    "too_small": 422,
    "unsupported_format": 415,
    "too_many_pixels": 413,
}


class ImageRequestError(Exception):
    """A request that cannot be classified; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageRequestLimits:
    """What one image request may carry."""

    max_images: int = 16
    max_image_bytes: int = 10_000_000
    image: ImageLimits = field(default_factory=ImageLimits)


@dataclass(frozen=True)
class UploadedImage:
    """One image of a request: its position, the name its client gave it, its bytes."""

    index: int  # 1-based
    name: str | None
    data: bytes

    def describe(self) -> str:
        """How an error names it: ``image 2 (scratch.png)``."""
        return f"image {self.index}" + (f" ({self.name})" if self.name else "")


def read_json_images(body: bytes, limits: ImageRequestLimits) -> list[UploadedImage]:
    """The images of a ``{"images": [base64, ...]}`` body.

    Raises:
        ImageRequestError: not that shape, a string that is not base64, or over a limit.
    """
    try:
        payload = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImageRequestError(
            400, f"Invalid body: expected a JSON object, found bytes that do not parse ({exc})."
        ) from exc
    items = payload.get(IMAGES_FIELD) if isinstance(payload, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ImageRequestError(
            400,
            f'This service classifies images: expected {{"images": [<base64 string>, ...]}} or a '
            f"multipart upload of image files, found {found}.",
        )
    _check_count(len(items), limits)
    images = []
    for index, item in enumerate(items, start=1):
        encoded = item.split(",", 1)[1] if item.startswith("data:") else item  # a data URL's payload
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageRequestError(
                400, f"image {index} is not valid base64 ({exc}); expected the file's bytes, base64-encoded."
            ) from exc
        images.append(_sized(UploadedImage(index, None, data), limits))
    return images


async def read_multipart_images(request: Any, limits: ImageRequestLimits) -> list[UploadedImage]:
    """Every file part of a multipart/form-data request (a Starlette ``Request``), in order.

    Raises:
        ImageRequestError: no file parts, too many, or one over the byte limit.
    """
    try:
        form = await request.form(max_files=limits.max_images + 1, max_fields=limits.max_images + 10)
    except Exception as exc:  # python-multipart raises several types for a malformed body
        raise ImageRequestError(400, f"Invalid multipart body: {exc}.") from exc
    files = [value for _, value in form.multi_items() if hasattr(value, "read")]
    if not files:
        raise ImageRequestError(
            400,
            "No image files in the multipart body: expected one or more file parts (curl -F images=@a.png).",
        )
    _check_count(len(files), limits)
    images = []
    for index, upload in enumerate(files, start=1):
        data = await upload.read()
        images.append(_sized(UploadedImage(index, upload.filename, data), limits))
    await form.close()
    return images


def _check_count(count: int, limits: ImageRequestLimits) -> None:
    if count == 0:
        raise ImageRequestError(400, f"No images: expected 1 to {limits.max_images} images.")
    if count > limits.max_images:
        raise ImageRequestError(
            413, f"Too many images: {count} in one request, expected at most {limits.max_images}."
        )


def _sized(image: UploadedImage, limits: ImageRequestLimits) -> UploadedImage:
    if len(image.data) > limits.max_image_bytes:
        raise ImageRequestError(
            413,
            f"{image.describe()} is {len(image.data):,} bytes; expected at most {limits.max_image_bytes:,}.",
        )
    return image


def check_images(images: list[UploadedImage], limits: ImageRequestLimits) -> None:
    """Decode every image as the model will (blocking: run it in a thread).

    Raises:
        ImageRequestError: the first image that cannot be classified, named, with its status.
    """
    for image in images:
        try:
            decode_image(image.data, image.describe(), limits.image)
        except ImageError as exc:
            raise ImageRequestError(REASON_STATUS.get(exc.reason, 422), str(exc)) from exc


def to_json_body(images: list[UploadedImage]) -> bytes:
    """The canonical body the batched API reads."""
    encoded = [base64.b64encode(image.data).decode("ascii") for image in images]
    return json.dumps({IMAGES_FIELD: encoded}).encode()
