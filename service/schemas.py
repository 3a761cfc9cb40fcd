"""Request bodies and their validation; every error says what was expected and what was found."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def text_list_type(max_texts: int, max_chars: int) -> Any:
    """The type of ``texts``: 1 to ``max_texts`` non-blank strings of at most ``max_chars`` each."""

    def check_text(text: str) -> str:
        if not text.strip():
            raise ValueError(f"expected a text with at least one visible character, found {text!r}")
        if len(text) > max_chars:
            raise ValueError(f"expected at most {max_chars} characters, found {len(text)}")
        return text

    return Annotated[
        list[Annotated[str, AfterValidator(check_text)]],
        Field(min_length=1, max_length=max_texts, description=f"1 to {max_texts} texts to classify"),
    ]


class FeedbackRequest(BaseModel):
    """The true label of an earlier prediction (by request id) or of a text."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, description="the true label")
    request_id: str | None = Field(None, description="request_id returned by /classify")
    text: str | None = Field(None, description="the text, when there is no request id")

    @model_validator(mode="after")
    def _check_reference(self) -> FeedbackRequest:
        if not self.request_id and not (self.text and self.text.strip()):
            raise ValueError("expected a request_id or a non-blank text, found neither")
        return self


def describe_validation_errors(errors: list[Any]) -> dict[str, Any]:
    """The 400 body for invalid input, in the same shape as BentoML's own validation errors."""
    detail = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in errors
    ]
    summary = "; ".join(f"{'.'.join(d['loc'][1:] or d['loc'])}: {d['msg']}" for d in detail)
    return {"error": f"Invalid request: {summary}", "detail": detail}
