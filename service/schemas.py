"""Request bodies and their validation; every error says what was expected and what was found."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from training.label_variants import matching_label

REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"  # what /classify answers with (uuid4 hex)


def check_unicode(text: str) -> str:
    """``text`` unchanged if it is valid Unicode (it can be stored and tokenized as UTF-8).

    Raises:
        ValueError: it holds a lone surrogate (a JSON escape such as ``\\ud800`` with no pair).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"expected valid Unicode text, found a lone surrogate {text[exc.start]!r} at position {exc.start}"
        ) from None
    return text


# A text needs one character outside this class: whitespace and separators (Unicode categories
# Z*), control (Cc) and format characters (Cf: zero-width spaces, joiners, marks) of the Basic
# Multilingual Plane. A regular expression, so that the OpenAPI document states the rule the
# service applies (tests/test_service_units.py compares it with unicodedata).
VISIBLE_CHARACTER = (
    r"[^\u0000-\u0020\u007f-\u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u1680"
    r"\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u3000\ufeff\ufff9-\ufffb]"
)
INVISIBLE_CATEGORIES = ("Zs", "Zl", "Zp", "Cc", "Cf")


def has_visible_character(text: str) -> bool:
    """Whether ``text`` has a character that shows (see ``VISIBLE_CHARACTER``)."""
    return re.search(VISIBLE_CHARACTER, text) is not None


def text_checker(max_chars: int) -> Callable[[str], str]:
    """The check of one client text: valid Unicode, a visible character, at most ``max_chars``."""

    def check_text(text: str) -> str:
        check_unicode(text)
        if not has_visible_character(text):
            raise ValueError(f"expected a text with at least one visible character, found {text!r}")
        if len(text) > max_chars:
            raise ValueError(f"expected at most {max_chars} characters, found {len(text)}")
        return text

    return check_text


def checked_text_type(max_chars: int) -> Any:
    """One client text: checked by :func:`text_checker`, its rules stated in the JSON schema."""
    rules: dict[str, Any] = {"minLength": 1, "maxLength": max_chars, "pattern": VISIBLE_CHARACTER}
    return Annotated[str, AfterValidator(text_checker(max_chars)), Field(json_schema_extra=rules)]


def text_list_type(max_texts: int, max_chars: int) -> Any:
    """The type of ``texts``: 1 to ``max_texts`` visible, valid strings of at most ``max_chars`` each."""
    text = checked_text_type(max_chars)
    return Annotated[
        list[text],  # type: ignore[valid-type]
        Field(min_length=1, max_length=max_texts, description=f"1 to {max_texts} texts to classify"),
    ]


def image_list_type(max_images: int) -> Any:
    """The type of ``images``: 1 to ``max_images`` base64 strings (checked by the guard first)."""
    return Annotated[
        list[Annotated[str, Field(min_length=1, json_schema_extra={"contentEncoding": "base64"})]],
        Field(min_length=1, max_length=max_images, description=f"1 to {max_images} base64-encoded images"),
    ]


def integer_as_label(value: Any) -> Any:
    """An integer label as the text the model knows it by: labels read from a file of numbers
    (``stars`` 0-5, class ids) are strings in the model, and clients send them as JSON numbers.
    Booleans and fractions stay refused, as anything else that is not a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


MAX_LABEL_CHARS = 200
# What the label's validators accept, stated once for the OpenAPI document (the Field's length
# limits would otherwise describe the string branch only).
LABEL_SCHEMA = {
    "anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_LABEL_CHARS}, {"type": "integer"}],
    "description": "the true label (an integer stands for its digits: 3 for '3')",
}


class FeedbackRequest(BaseModel):
    """The true label of an earlier prediction (by request id) or of a text."""

    # The schema says what the validator below checks: a request_id or a text, not null.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("request_id", "text")
            ]
        },
    )

    label: Annotated[
        str, BeforeValidator(integer_as_label), AfterValidator(check_unicode), WithJsonSchema(LABEL_SCHEMA)
    ] = Field(min_length=1, max_length=MAX_LABEL_CHARS)
    request_id: str | None = Field(
        None, pattern=REQUEST_ID_PATTERN, description="request_id returned by /classify"
    )
    text: str | None = Field(None, description="the text, when there is no request id")

    @model_validator(mode="after")
    def _check_reference(self) -> FeedbackRequest:
        if not self.request_id and not self.text:
            raise ValueError("expected a request_id or a non-blank text, found neither")
        return self


def feedback_request_type(max_chars: int) -> type[FeedbackRequest]:
    """The /feedback body, its text held to the same rules as a text sent to /classify."""
    text_type = checked_text_type(max_chars)

    class CheckedFeedbackRequest(FeedbackRequest):
        __doc__ = FeedbackRequest.__doc__

        text: text_type | None = Field(None, description="the text, when there is no request id")  # type: ignore[valid-type]

    return CheckedFeedbackRequest


def describe_validation_errors(errors: list[Any]) -> dict[str, Any]:
    """The 400 body for invalid input, in the same shape as BentoML's own validation errors."""
    detail = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in errors
    ]
    summary = "; ".join(f"{'.'.join(d['loc'][1:] or d['loc'])}: {d['msg']}" for d in detail)
    return {"error": f"Invalid request: {summary}", "detail": detail}


def describe_unknown_label(label: str, allowed: list[str], model: str) -> str:
    """The 422 message for a feedback label the model does not accept: the label it is another
    spelling of, when there is one, else how to add a new label."""
    same = matching_label(label, allowed)
    if same is not None:
        return (
            f"Unknown label {label!r}: did you mean {same!r}? Labels are compared exactly; "
            f"expected one of the {len(allowed)} labels in 'allowed_labels'."
        )
    return (
        f"Unknown label {label!r}: expected one of the {len(allowed)} labels in 'allowed_labels'. "
        f"For a new label, run `refit models add-label {model} {label}` (no restart needed) or set "
        "REFIT_SERVE_FEEDBACK_EXTRA_LABELS."
    )


def describe_texts_body_shape(body: bytes) -> str | None:
    """What is wrong with the shape of a /classify body for a text model, or None.

    None also for a body that is not JSON or whose texts are wrong one by one: the service's own
    validation names those. This catches the shapes a first request tends to have (``{"text":
    "..."}``, a bare list, ``{"texts": "..."}``), which that validation would answer with "Field
    required" or "Input should be an object", not with what it found.
    """
    expected = 'expected a JSON object {"texts": ["...", ...]}'
    if not body.strip():
        return f"{expected}; found an empty body"
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, list):
        return f'{expected}; found an array (send it as the value of "texts")'
    if not isinstance(value, dict):
        return f"{expected}; found {json.dumps(value)[:60]}"
    if "texts" not in value:
        hint = ' (one text goes in a list: {"texts": ["..."]})' if "text" in value else ""
        hint = " (this model classifies texts, not images)" if "images" in value else hint
        return f"{expected}; found the keys {sorted(value)[:10]}{hint}"
    if isinstance(value["texts"], str):
        return f'{expected}; found "texts" holding one string, not a list (wrap it: ["..."])'
    return None
