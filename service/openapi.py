"""The OpenAPI document says what the service does: every status a route answers, and its headers.

BentoML documents ``/classify`` with 200/400/404/500 and describes an error's ``detail`` as a
string, while its validation errors carry a list. :func:`complete_openapi` edits the document
BentoML serves at ``/docs.json`` (the guard applies it to the response, see ``service/guard.py``):
``/classify`` gains the statuses the guard and the pinned route answer and the ``X-Model-Version``
header, and ``detail`` may be any JSON value. FastAPI's routes document theirs with
:func:`error_responses`.

The document follows what the worker serves: for an image model, ``/classify`` takes base64
images as JSON or image files as multipart/form-data (the guard reads both and sends them on to
the batched ``/classify_images``, which is internal and left out of the document either way).
"""

from __future__ import annotations

from typing import Any

DOCS_PATH = "/docs.json"

ERROR_DESCRIPTIONS = {
    400: "Invalid body: what was expected and what was found",
    401: "Missing or invalid API key (when keys are in use)",
    403: "The API key lacks the scope this route needs, or the pinned version may not be served",
    404: "Unknown request_id, or unknown pinned version",
    413: "Body over max_body_bytes",
    415: "Body that is not JSON (multipart too, for an image model), or an image of an unsupported format",
    422: "Unknown label: the allowed ones, and how to add one; an image that is not one, truncated "
    "or too small",
    429: "Over the API key's rate limit (Retry-After)",
    503: "Overloaded, the pinned version still loading, or the inference log not taking writes; "
    "retry after Retry-After",
}
ERROR_BODY = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
CLASSIFY_ERRORS = (401, 403, 413, 415, 429, 503)
IMAGES_PATH = "/classify_images"
IMAGE_FILES = {
    "type": "object",
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
    },
    "required": ["images"],
}
VERSION_HEADER = {
    "name": "X-Model-Version",
    "in": "header",
    "required": False,
    "description": "Classify with this version instead of production: `production`, `candidate`, or "
    "a version id an admin allowed (`refit models allow-pin`); needs the `pin` scope when keys are "
    "in use. Pinned requests are not batched with production traffic. Empty: production, batched.",
    "schema": {"type": "string", "maxLength": 64},
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route answers, each with its JSON body."""
    body = {"application/json": {"schema": ERROR_BODY}}
    return {status: {"description": ERROR_DESCRIPTIONS[status], "content": body} for status in statuses}


def complete_openapi(document: dict[str, Any], modality: str = "text") -> dict[str, Any]:
    """BentoML's document with ``/classify``'s statuses, header and (for an image model) bodies,
    and ``detail`` of any JSON type."""
    for schema in document.get("components", {}).get("schemas", {}).values():
        detail = schema.get("properties", {}).get("detail")
        if isinstance(detail, dict) and detail.get("title") == "Error Detail":
            detail.pop("type", None)  # a list of validation errors, or a message
    paths = document.get("paths", {})
    images = paths.pop(IMAGES_PATH, {}).get("post")
    classify = paths.get("/classify", {}).get("post")
    if classify is not None and images is not None and modality == "image":
        json_body = images.get("requestBody", {}).get("content", {}).get("application/json", {})
        classify["requestBody"] = {
            "content": {"application/json": json_body, "multipart/form-data": {"schema": IMAGE_FILES}}
        }
        classify.setdefault("responses", {}).update(
            {
                "422": {
                    "description": ERROR_DESCRIPTIONS[422],
                    "content": {"application/json": {"schema": ERROR_BODY}},
                }
            }
        )
    if classify is not None:
        classify.setdefault("responses", {}).update(
            {str(status): response for status, response in error_responses(*CLASSIFY_ERRORS).items()}
        )
        if "requestBody" in classify:  # BentoML leaves it optional; a request without one is a 400
            classify["requestBody"]["required"] = True
        parameters = classify.setdefault("parameters", [])
        if not any(p.get("name") == VERSION_HEADER["name"] for p in parameters):
            parameters.append(VERSION_HEADER)
    return document
