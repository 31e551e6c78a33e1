"""The WebSocket route of the hub, and the checks in front of its consumer."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import AllowedHostsOriginValidator, WebsocketDenier
from channels.sessions import SessionMiddlewareStack
from django.urls import path

from .conf import conf
from .consumers import BroadcastConsumer
from .servers import Scope, mark_single_callable

logger = logging.getLogger(__name__)

websocket_urlpatterns = [
    path("ws/broadcast/", BroadcastConsumer.as_asgi()),
]


class SessionIfAuthRequired:
    """
    Channels' session middleware around ``inner``, only while BROADCAST_REQUIRE_AUTH
    is on (the consumer then resolves the user from the session).

    Every middleware layer keeps its own copy of the scope alive for as long as the
    connection lasts, and the session stack adds two plus a session wrapper: memory
    spent on every idle connection for nothing when the hub is open to all. Decided
    per connection, so the setting can change at run time.
    """

    # A plain __call__ that hands back the chosen application's coroutine: an async
    # one would keep a coroutine of its own alive for every connection's lifetime.
    # The flag tells Channels' and asgiref's checks it is a single-callable app.

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.with_session = SessionMiddlewareStack(inner)

    def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        app = self.with_session if conf.BROADCAST_REQUIRE_AUTH else self.inner
        return app(scope, receive, send)


mark_single_callable(SessionIfAuthRequired)


class AllowedOrigins:
    """
    Channels' ``AllowedHostsOriginValidator`` (its own check decides), with two
    changes for the connect path: the verdict is remembered per Origin header value
    (a site sees a handful; the memory is bounded), where Channels parses the origin
    and every allowed-host pattern with ``urlparse`` on every connect; and, like
    :class:`SessionIfAuthRequired`, no coroutine of its own per connection.
    """

    MAX_REMEMBERED = 256

    def __init__(self, application: Any) -> None:
        self.application = application
        self._validator = AllowedHostsOriginValidator(application)
        self._remembered: dict[bytes | None, bool] = {}

    def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("AllowedOrigins only guards WebSocket connections")
        origin = None
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                origin = value  # the last one counts, as in Channels
        verdict = self._remembered.get(origin)
        if verdict is None:
            verdict = self.judge(origin)
            if len(self._remembered) >= self.MAX_REMEMBERED:
                self._remembered.clear()  # random origins from an attacker cannot grow it
            self._remembered[origin] = verdict
        if verdict:
            return self.application(scope, receive, send)
        return WebsocketDenier()(scope, receive, send)

    @property
    def remembered(self) -> int:
        """How many Origin values have a verdict remembered (at most MAX_REMEMBERED)."""
        return len(self._remembered)

    def judge(self, origin: bytes | None) -> bool:
        """Channels' own verdict on one Origin header value (None: no header)."""
        parsed = urlparse(origin.decode("latin1")) if origin is not None else None
        verdict = bool(self._validator.valid_origin(parsed))
        if not verdict:
            # Once per Origin value while it is remembered: a refused client retrying
            # cannot flood the log.
            logger.warning("%s", refusal(origin))
        return verdict


def refusal(origin: bytes | None) -> str:
    """Why a WebSocket handshake with this Origin header value gets 403."""
    if origin is None:
        return (
            "Refused a WebSocket with no Origin header (403): browsers always send one; "
            "a script or a mobile client must send an Origin whose host is in ALLOWED_HOSTS."
        )
    shown = origin[:100].decode("latin1")
    return f"Refused a WebSocket from Origin {shown!r} (403): its host is not in ALLOWED_HOSTS."


mark_single_callable(AllowedOrigins)
