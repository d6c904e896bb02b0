"""The gate in front of every route: bearer-token auth, the body-size limit, request metrics,
and the last word on bugs (500 ``internal_error``, no details; the traceback is logged).

:class:`Gate` is plain ASGI middleware, so it runs before the framework reads or
validates a body: an unauthenticated client gets 401 (never a validation error that
reveals the schema), and an oversized body is refused without being parsed.

Auth: with an API key, every route except ``/health`` and ``/ready`` needs
``Authorization: Bearer KEY``; with a write key, ``POST /items`` and ``DELETE /items/{id}``
need that key (reads then accept either key). Tokens are compared with
:func:`hmac.compare_digest` against every accepted key (constant time, no early exit).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from metric_sim.serve.errors import ApiError, limit_exceeded
from metric_sim.serve.metrics import ServerMetrics

__all__ = ["Auth", "Gate", "OPEN_PATHS", "is_write", "route_label"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/ready"})
ROUTES = frozenset({"/v1/embeddings", "/similarity", "/search", "/items", "/health", "/ready", "/metrics",
                    "/docs", "/openapi.json", "/redoc"})
logger = logging.getLogger(__name__)

DRAIN_LIMIT = 64 * 1024 * 1024  # read (and drop) at most this much of a refused body, so the client sees the 413


def is_write(method: str, path: str) -> bool:
    return (method == "POST" and path == "/items") or (method == "DELETE" and path.startswith("/items/"))


def route_label(path: str) -> str:
    """The route template of ``path`` (few values, so metrics stay small)."""
    if path in ROUTES:
        return path
    if path.startswith("/items/"):
        return "/items/{id}"
    return "other"


class Auth:
    """Which bearer tokens each request needs."""

    def __init__(self, api_key: str | None = None, write_api_key: str | None = None) -> None:
        self.read_keys = [k.encode() for k in (api_key, write_api_key) if k] if api_key else []
        write = write_api_key or api_key
        self.write_keys = [write.encode()] if write else []

    @property
    def enabled(self) -> bool:
        return bool(self.read_keys or self.write_keys)

    def check(self, method: str, path: str, authorization: bytes | None) -> ApiError | None:
        """None when the request may pass; the 401 to send otherwise."""
        if path in OPEN_PATHS:
            return None
        keys = self.write_keys if is_write(method, path) else self.read_keys
        if not keys:
            return None
        token = b""
        if authorization is not None:
            scheme, _, value = authorization.partition(b" ")
            if scheme.lower() == b"bearer":
                token = value.strip()
        accepted = False
        for key in keys:
            accepted |= hmac.compare_digest(token, key)
        if accepted:
            return None
        what = "the write key" if is_write(method, path) else "an API key"
        return ApiError(401, "unauthorized", f"missing or wrong bearer token: this route needs {what} "
                                             "('Authorization: Bearer KEY')", headers={"WWW-Authenticate": "Bearer"})


async def send_error(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _check_content_type(method: str, content_type: bytes | None) -> ApiError | None:
    """415 for a body that says it is not JSON. Browsers send forms and text/plain across origins
    without asking first; refusing them keeps a web page from writing to a server on localhost."""
    if method not in ("POST", "PUT", "PATCH") or content_type is None:
        return None
    media = content_type.split(b";", 1)[0].strip().lower()
    if media == b"application/json" or media.endswith(b"+json"):
        return None
    return ApiError(415, "unsupported_media_type",
                    f"the body must be JSON (Content-Type: application/json), got {media.decode('latin-1')!r}")


class Gate:
    """ASGI middleware: auth, then the body limit (the body is read here and replayed), then the app."""

    def __init__(self, app: Any, *, auth: Auth, max_body_bytes: int, metrics: ServerMetrics) -> None:
        self.app = app
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        status = [0]

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            headers = dict(scope.get("headers") or [])
            error = self.auth.check(method, path, headers.get(b"authorization"))
            replay = None
            if error is None:
                error = _check_content_type(method, headers.get(b"content-type"))
            if error is None:
                error, replay = await self._read_body(headers, receive)
            if error is not None:
                self.metrics.observe_error(error.kind)
                await send_error(send_and_watch, error)
            else:
                await self.app(scope, replay, send_and_watch)
        except Exception:  # a bug: the traceback goes to the log, the client gets no details
            logger.exception("internal error on %s %s", method, path)
            self.metrics.observe_error("internal_error")
            if not status[0]:  # answered here, not re-raised: the connection stays usable
                await send_error(send_and_watch, ApiError(500, "internal_error", "internal error"))
        finally:
            self.metrics.observe_request(route_label(path), method, status[0] or 500, time.perf_counter() - started)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> tuple[ApiError | None, Receive]:
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        too_big: ApiError | None = None
        if declared is not None and declared.isdigit() and int(declared) > limit:
            too_big = limit_exceeded("body", "the body size in bytes", limit, int(declared))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away
            body = message.get("body", b"")
            size += len(body)
            more = message.get("more_body", False)
            if too_big is None and size > limit:
                too_big = limit_exceeded("body", "the body size in bytes", limit, size)
            if too_big is not None:
                chunks = []
                if size > DRAIN_LIMIT:
                    break
            else:
                chunks.append(body)
        if too_big is not None:
            return too_big, receive
        whole = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        return None, replay
