"""ASGI middleware in front of the API: body size limit, overload shedding, version pinning.

- A body over ``max_body_bytes`` gets a 413 before any of it is parsed.
- More than ``max_inflight`` classify requests at once get a 503 with ``Retry-After``; so does
  every other 503. BentoML's dispatcher sheds a request whose batch would miss
  ``max_latency_ms`` with a 503 that says "An unexpected error has occurred": the guard rewrites
  that body to say the worker is overloaded and counts it as an ``overloaded`` rejection.
- A classify request with an ``X-Model-Version`` header goes to the pinned route: pinned
  requests skip adaptive batching, because one batch runs one model version.
- With API keys (``service/keys.py``), a route that needs a scope answers 401 without a valid
  ``Authorization: Bearer`` key, 403 when the key lacks the scope, and 429 + ``Retry-After`` over
  the key's rate limit. Probes, metrics and the API docs stay open.
- ``GET /readyz`` of a degraded worker (serving an earlier version because production does not
  load) answers 203 with the reason: still ready to take traffic (Kubernetes and load balancers
  count any 2xx as ready), but a probe or a person can tell it from a healthy 200.
- ``GET /docs.json`` (BentoML's OpenAPI document) is passed through ``edit_openapi`` (see
  ``service/openapi.py``), so that it lists the statuses and headers this middleware adds.
- A text classify body of the wrong shape (``{"text": "..."}``, a bare list, ``{"texts": "..."}``)
  gets a 400 that says what was expected and what was found.
- A body that says it is not JSON (multipart, form, text, XML) gets a 415: BentoML would try to
  parse a multipart body as files and fail with a 500. A body without a Content-Type is read as
  JSON.
- While the worker serves an image model, /classify takes JSON with base64 images or a
  multipart upload (up to ``max_image_body_bytes``); every image is checked in a thread
  (``service/image_requests.py``) and a bad one gets a 4xx naming it; the rest goes on to the
  batched image API as one JSON body. A text model answers the image API with a 404.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.balance import ConnectionBalance
from service.bentoml_patches import ORIGINAL_PATH
from service.image_requests import (
    ImageRequestError,
    ImageRequestLimits,
    UploadedImage,
    check_images,
    read_json_images,
    read_multipart_images,
    to_json_body,
)
from service.keys import KeyRing
from service.schemas import describe_texts_body_shape

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLASSIFY_PATH = "/classify"
PINNED_PATH = "/classify_pinned"
IMAGES_PATH = "/classify_images"  # the batched image API; clients send images to /classify
VERSION_HEADER = b"x-model-version"
GUARDED_PATHS = frozenset({CLASSIFY_PATH, PINNED_PATH, IMAGES_PATH, "/feedback"})
CLASSIFY_PATHS = frozenset({CLASSIFY_PATH, PINNED_PATH, IMAGES_PATH})
ROUTE_SCOPES = {
    CLASSIFY_PATH: "predict",
    IMAGES_PATH: "predict",
    PINNED_PATH: "pin",
    "/feedback": "feedback",
    "/model": "predict",
}
# BentoML's answer to any server-side exception, the dispatcher's ServiceUnavailable included.
SHED_BODY = b"An unexpected error has occurred"
MULTIPART = "multipart/form-data"
KEY_NAME = "refit.key"  # the authenticated key's name, in the scope, for the routes to record
READY_PATH = "/readyz"
DOCS_PATH = "/docs.json"


@dataclass
class WorkerStatus:
    """What the worker's service sets and the guard reads: why it is degraded, when it is, and
    what its model classifies."""

    degraded: str | None = None
    modality: str = "text"


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
        keys_file: Callable[[], Path] | None = None,
        status: WorkerStatus | None = None,
        edit_openapi: Callable[[dict[str, Any], str], dict[str, Any]] | None = None,
        image_limits: ImageRequestLimits | None = None,
        max_image_body_bytes: int = 64_000_000,
        max_latency_ms: int = 1000,
        balance: Callable[[], ConnectionBalance | None] | None = None,
    ) -> None:
        self.app = app
        # Resolved in the worker, like the keys: each worker has its own share of connections.
        self.balance = balance() if balance is not None else None
        self.status = status or WorkerStatus()
        self.edit_openapi = edit_openapi
        # Resolved when the app is built in the worker: the settings of the process that serves.
        self.keys = KeyRing(keys_file()) if keys_file is not None else None
        self.max_body_bytes = max_body_bytes
        self.image_limits = image_limits or ImageRequestLimits()
        self.max_image_body_bytes = max_image_body_bytes
        self.max_inflight = max_inflight
        self.retry_after = str(retry_after_s).encode()
        self.shed_error = (
            f"Overloaded: the batching queue cannot answer within max_latency_ms ({max_latency_ms} ms); "
            f"retry after {retry_after_s} s, or serve with more workers or a faster backend (ONNX)."
        )
        self.on_reject = on_reject
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if ORIGINAL_PATH in scope:  # relabelled for BentoML's metrics only: route the real path
            scope = {**scope, "path": scope[ORIGINAL_PATH]}
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == READY_PATH and self.status.degraded:
            await send_json(send, 203, {"status": "degraded", "reason": self.status.degraded}, [])
            return
        if scope["path"] == DOCS_PATH and self.edit_openapi is not None:
            await self._send_edited_openapi(scope, receive, send)
            return
        if scope["path"] == CLASSIFY_PATH and _header(scope, VERSION_HEADER).strip():
            scope = {**scope, "path": PINNED_PATH, "raw_path": PINNED_PATH.encode()}
        needed = ROUTE_SCOPES.get(scope["path"])
        if needed is not None and self.keys is not None and self.keys.enabled:
            authorized = await self._authorize(scope, needed, send)
            if authorized is None:
                return
            scope = authorized
        if scope["path"] not in GUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["path"] in CLASSIFY_PATHS and self.status.modality == "image":
            await self._classify_images(scope, receive, send)
            return
        if scope["path"] == IMAGES_PATH:
            error = f'This service classifies texts: send {{"texts": [...]}} to {CLASSIFY_PATH}.'
            await send_json(send, 404, {"error": error}, [])
            return
        content_type = _content_type(scope)
        if content_type not in ("", "application/json"):
            self.on_reject("unsupported_media_type")
            error = f"Unsupported Content-Type: expected application/json, found {content_type}."
            await send_json(send, 415, {"error": error}, [])
            return
        body = await self._read_limited(receive, send, self.max_body_bytes)
        if body is None:
            return
        problem = describe_texts_body_shape(body) if scope["path"] in CLASSIFY_PATHS else None
        if problem is not None:
            detail = [{"loc": ["body"], "msg": problem, "type": "body_shape"}]
            await send_json(send, 400, {"error": f"Invalid request: {problem}", "detail": detail}, [])
            return
        await self._forward(scope, body, receive, send, is_classify=scope["path"] in CLASSIFY_PATHS)

    async def _forward(
        self, scope: Scope, body: bytes, receive: Receive, send: Send, is_classify: bool
    ) -> None:
        """Pass the request on with its read body, unless too many classify requests are in flight."""
        if is_classify and self.inflight >= self.max_inflight:
            self.on_reject("overloaded")
            error = (
                f"Overloaded: {self.inflight} requests in flight (limit {self.max_inflight}); retry later."
            )
            await send_json(send, 503, {"error": error}, [(b"retry-after", self.retry_after)])
            return
        self.inflight += is_classify
        client = tuple(scope.get("client") or ())  # (host, port): one keep-alive connection
        if is_classify and self.balance is not None and self.balance.should_close(client):
            send = _closing_connection(send)
        try:
            await self.app(scope, _replay(body, receive), self._add_retry_after(send))
        finally:
            self.inflight -= is_classify

    async def _classify_images(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read, check and forward an image request; a 4xx names what is wrong with it."""
        import anyio

        content_type = _content_type(scope)
        if content_type not in ("", "application/json", MULTIPART):
            self.on_reject("unsupported_media_type")
            error = (
                f"Unsupported Content-Type: expected application/json (base64 images) or {MULTIPART} "
                f"(image files), found {content_type}."
            )
            await send_json(send, 415, {"error": error}, [])
            return
        body = await self._read_limited(receive, send, self.max_image_body_bytes)
        if body is None:
            return
        limits = self.image_limits
        try:
            images: list[UploadedImage]
            if content_type == MULTIPART:
                from starlette.requests import Request

                images = await read_multipart_images(Request(scope, _replay(body, receive)), limits)
            else:
                images = await anyio.to_thread.run_sync(read_json_images, body, limits)
            await anyio.to_thread.run_sync(check_images, images, limits)
        except ImageRequestError as exc:
            self.on_reject("invalid_image")
            await send_json(send, exc.status, {"error": str(exc)}, [])
            return
        canonical = to_json_body(images)
        path = IMAGES_PATH if scope["path"] == CLASSIFY_PATH else scope["path"]
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")] + [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(canonical)).encode()),
        ]
        forwarded = {**scope, "path": path, "raw_path": path.encode(), "headers": headers}
        await self._forward(forwarded, canonical, receive, send, is_classify=True)

    async def _send_edited_openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """BentoML's OpenAPI document, edited, as a whole JSON response (other statuses unchanged)."""
        assert self.edit_openapi is not None
        start: Message = {}
        chunks: list[bytes] = []

        async def collect(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, collect)
        body = b"".join(chunks)
        if start.get("status") != 200:
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        await send_json(send, 200, self.edit_openapi(json.loads(body), self.status.modality), [])

    async def _authorize(self, scope: Scope, needed: str, send: Send) -> Scope | None:
        """``scope`` with the key's name added, or None once a 401, 403 or 429 has been sent."""
        assert self.keys is not None
        key = self.keys.authenticate(_header(scope, b"authorization"))
        if key is None:
            self.on_reject("unauthenticated")
            error = "Missing or invalid API key: expected the header 'Authorization: Bearer <key>'."
            await send_json(send, 401, {"error": error}, [(b"www-authenticate", b"Bearer")])
            return None
        if not key.allows(needed):
            self.on_reject("forbidden")
            error = (
                f"API key {key.name!r} lacks the scope {needed!r} that {scope['method']} "
                f"{_route_name(scope['path'])} needs; it has: {', '.join(key.scopes)}."
            )
            await send_json(send, 403, {"error": error}, [])
            return None
        wait = self.keys.retry_after(key)
        if wait > 0:
            self.on_reject("rate_limited")
            error = f"API key {key.name!r} is over its limit of {key.rate_per_s:g} requests/s; retry later."
            await send_json(send, 429, {"error": error}, [(b"retry-after", str(math.ceil(wait)).encode())])
            return None
        return {**scope, KEY_NAME: key.name}

    async def _read_limited(self, receive: Receive, send: Send, limit: int) -> bytes | None:
        """The whole body, or None once a 413 has been sent for a body over ``limit`` bytes."""
        body = await self._read_body(receive, limit)
        if body is None:
            self.on_reject("body_too_large")
            error = f"Request body too large: expected at most {limit} bytes."
            await send_json(send, 413, {"error": error}, [])
        return body

    async def _read_body(self, receive: Receive, limit: int) -> bytes | None:
        """The whole request body, or None as soon as it passes ``limit`` bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _add_retry_after(self, send: Send) -> Send:
        """``send`` with ``Retry-After`` on every 503, and a clear body on BentoML's shedding 503."""
        held: list[Message] = []

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", self.retry_after))
                held.append({**message, "headers": headers})
                return
            if held and message["type"] == "http.response.body":
                held.append(message)
                if message.get("more_body", False):
                    return
                await self._send_503(held, send)
                held.clear()
                return
            await send(message)

        return wrapped

    async def _send_503(self, messages: list[Message], send: Send) -> None:
        """Send a held 503; BentoML's body for a shed request is replaced by what happened."""
        body = b"".join(m.get("body", b"") for m in messages[1:])
        if SHED_BODY not in body:
            for message in messages:
                await send(message)
            return
        self.on_reject("overloaded")
        payload = json.dumps({"error": self.shed_error}).encode()
        headers = [(k, v) for k, v in messages[0]["headers"] if k.lower() != b"content-length"]
        await send({**messages[0], "headers": [*headers, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _closing_connection(send: Send) -> Send:
    """``send`` with ``Connection: close`` on the response: the client reconnects for its next
    request, and another worker may take it (service/balance.py)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return wrapped


def _header(scope: Scope, name: bytes) -> str:
    """A request header's value (``""`` when absent)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def _route_name(path: str) -> str:
    """The route as a client names it: the pinned route is /classify with X-Model-Version."""
    return f"{CLASSIFY_PATH} with X-Model-Version" if path == PINNED_PATH else path


def _content_type(scope: Scope) -> str:
    """The request's media type, lower case, without parameters (``""`` when there is none)."""
    return _header(scope, b"content-type").split(";", 1)[0].strip().lower()


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
