"""
The publish API's gate, in front of Django's ASGI handler: Django reads a request's
whole body (to disk past 2.5 MB) before any view runs, so the view alone cannot refuse
a client with a wrong key, or one that declares 200 MB, before reading it all. The
guard judges the key and the declared length first, then reads the body within its
limit and BODY_READ_SECONDS, and hands Django the body it read; the view judges it
again (it also serves WSGI, which reads lazily).

daphne's Twisted reads every body before any application runs: behind daphne, only
the proxy in front bounds it (docs/security.md).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from django.urls import NoReverseMatch, reverse

from broadcast.conf import conf
from broadcast.publishing.http import BEARER_CHALLENGE, body_limit, key_number
from broadcast.seams.servers import Scope, mark_single_callable

# How long a client has to send the whole body once its headers are in.
BODY_READ_SECONDS = 10.0
# The scope key the guard sets: the view then knows the body was bounded.
GUARDED = "broadcast.guarded"


class PublishGuard:
    """Wraps the project's HTTP application (``"http": PublishGuard(django_asgi_app)``)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if scope["type"] != "http" or not _is_publish(scope):
            return self.application(scope, receive, send)
        return self._guard(scope, receive, send)

    async def _guard(self, scope: Scope, receive: Any, send: Any) -> None:
        # Every answer that needs no body comes before a byte of it is read: Django
        # would read it whole first, whatever the method.
        keys = conf.BROADCAST_API_KEYS
        if not keys:
            return await _answer(
                send, 404, "the HTTP publish API is off (BROADCAST_API_KEYS is empty)"
            )
        if scope.get("method") != "POST":
            return await _answer(send, 405, "use POST", [(b"allow", b"POST")])
        headers = {name.lower(): value for name, value in scope.get("headers", ())}
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if key_number(authorization, keys) is None:
            return await _answer(
                send, 401, "a valid 'Authorization: Bearer <key>' header is required",
                [(b"www-authenticate", BEARER_CHALLENGE.encode())],
            )  # fmt: skip
        limit = body_limit()
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _answer(send, 400, "the Content-Length header is not a number")
            if int(declared) > limit:
                return await _answer(send, 413, f"the body is over {limit} bytes")
        try:
            body = await asyncio.wait_for(_read(receive, limit), BODY_READ_SECONDS)
        except TimeoutError:
            return await _answer(send, 408, f"the body took over {BODY_READ_SECONDS:g} s")
        if body is None:
            return await _answer(send, 413, f"the body is over {limit} bytes")
        if isinstance(body, _Gone):
            return None
        scope[GUARDED] = True
        await self.application(scope, _replay(body, receive), send)
        return None


class _Gone:
    """The client disconnected before its body was in."""


async def _read(receive: Any, limit: int) -> bytes | _Gone | None:
    """The body, or None once it passes ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _Gone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives the body read already, then the client's own messages."""
    given = False

    async def replay() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # type: ignore[no-any-return]

    return replay


async def _answer(
    send: Any, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        # The unread body is left on the connection: it cannot carry another request.
        (b"connection", b"close"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_publish_path: str | None = None


def _is_publish(scope: Scope) -> bool:
    global _publish_path
    if _publish_path is None:
        try:
            _publish_path = reverse("broadcast-publish")
        except NoReverseMatch:  # not routed: nothing to guard
            _publish_path = ""
    path = scope.get("path", "")
    return bool(_publish_path) and path in (
        _publish_path,
        scope.get("root_path", "") + _publish_path,
    )


mark_single_callable(PublishGuard)
