"""ASGI middleware in front of the API: body size limit, overload shedding, version pinning.

- A body over ``max_body_bytes`` gets a 413 before any of it is parsed.
- More than ``max_inflight`` classify requests at once get a 503 with ``Retry-After``; so does
  every other 503 (BentoML's dispatcher sheds load with a bare 503 when its queue is too long).
- A classify request with an ``X-Model-Version`` header goes to the pinned route: pinned
  requests skip adaptive batching, because one batch runs one model version.
- A body that says it is not JSON (multipart, form, text, XML) gets a 415: BentoML would try to
  parse a multipart body as files and fail with a 500. A body without a Content-Type is read as
  JSON.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.bentoml_patches import ORIGINAL_PATH

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLASSIFY_PATH = "/classify"
PINNED_PATH = "/classify_pinned"
VERSION_HEADER = b"x-model-version"
GUARDED_PATHS = frozenset({CLASSIFY_PATH, PINNED_PATH, "/feedback"})


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    """Send a complete JSON response."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    """The middleware; BentoML builds it with the options given to ``add_asgi_middleware``."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int = 1_000_000,
        max_inflight: int = 512,
        retry_after_s: int = 1,
        on_reject: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_inflight = max_inflight
        self.retry_after = str(retry_after_s).encode()
        self.on_reject = on_reject
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if ORIGINAL_PATH in scope:  # relabelled for BentoML's metrics only: route the real path
            scope = {**scope, "path": scope[ORIGINAL_PATH]}
        if scope["type"] != "http" or scope["path"] not in GUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        content_type = _content_type(scope)
        if content_type not in ("", "application/json"):
            self.on_reject("unsupported_media_type")
            error = f"Unsupported Content-Type: expected application/json, found {content_type}."
            await send_json(send, 415, {"error": error}, [])
            return
        body = await self._read_body(receive)
        if body is None:
            self.on_reject("body_too_large")
            error = f"Request body too large: expected at most {self.max_body_bytes} bytes."
            await send_json(send, 413, {"error": error}, [])
            return
        is_classify = scope["path"] in (CLASSIFY_PATH, PINNED_PATH)
        if is_classify and self.inflight >= self.max_inflight:
            self.on_reject("overloaded")
            error = (
                f"Overloaded: {self.inflight} requests in flight (limit {self.max_inflight}); retry later."
            )
            await send_json(send, 503, {"error": error}, [(b"retry-after", self.retry_after)])
            return
        if scope["path"] == CLASSIFY_PATH and any(k == VERSION_HEADER for k, _ in scope["headers"]):
            scope = {**scope, "path": PINNED_PATH, "raw_path": PINNED_PATH.encode()}
        self.inflight += is_classify
        try:
            await self.app(scope, _replay(body, receive), self._add_retry_after(send))
        finally:
            self.inflight -= is_classify

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole request body, or None as soon as it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _add_retry_after(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"retry-after" for k, _ in headers):
                    message = {**message, "headers": [*headers, (b"retry-after", self.retry_after)]}
            await send(message)

        return wrapped


def _content_type(scope: Scope) -> str:
    """The request's media type, lower case, without parameters (``""`` when there is none)."""
    for key, value in scope["headers"]:
        if key == b"content-type":
            return str(value.decode("latin-1").split(";", 1)[0].strip().lower())
    return ""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive callable that gives the already-read body once, then the client's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
