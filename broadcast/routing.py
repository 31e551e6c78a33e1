"""
The hub's ASGI pieces a project wires in its ``asgi.py``: the WebSocket route, the
checks in front of its consumer, and the publish API's guard (:class:`PublishGuard`).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import AllowedHostsOriginValidator, WebsocketDenier
from channels.sessions import SessionMiddlewareStack
from django.conf import settings
from django.urls import path

from broadcast.clients.consumer import BroadcastConsumer
from broadcast.clients.query import carries_token
from broadcast.conf import conf
from broadcast.publishing.guard import PublishGuard
from broadcast.seams.servers import Scope, mark_single_callable

logger = logging.getLogger(__name__)

__all__ = ["AllowedOrigins", "PublishGuard", "SessionIfAuthRequired", "websocket_urlpatterns"]

websocket_urlpatterns = [
    path("ws/broadcast/", BroadcastConsumer.as_asgi()),
]


class SessionIfAuthRequired:
    """
    Channels' session middleware around ``inner``, only where a user can matter:
    while BROADCAST_REQUIRE_AUTH is on, or for a connection that carries the session
    cookie (its user may subscribe to topics only it is allowed, such as
    ``user.<pk>``). The consumer resolves the user from the session when it needs it.

    Every middleware layer keeps its own copy of the scope alive for as long as the
    connection lasts, and the session stack adds two plus a session wrapper: memory
    spent on every idle connection for nothing when no session can be read. Decided
    per connection, so the setting can change at run time.
    """

    # A plain __call__ that hands back the chosen application's coroutine: an async
    # one would keep a coroutine of its own alive for every connection's lifetime.
    # The flag tells Channels' and asgiref's checks it is a single-callable app.

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.with_session = SessionMiddlewareStack(inner)

    def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        wanted = conf.BROADCAST_REQUIRE_AUTH or _has_session_cookie(scope)
        app = self.with_session if wanted else self.inner
        return app(scope, receive, send)


def _has_session_cookie(scope: Scope) -> bool:
    for key, value in scope.get("headers", ()):
        # Settings are read only for a connection with cookies (Django's lazy settings
        # cost a few microseconds a read, on every connect otherwise).
        if key == b"cookie" and settings.SESSION_COOKIE_NAME.encode("latin1") + b"=" in value:
            return True
    return False


mark_single_callable(SessionIfAuthRequired)


class Denier(WebsocketDenier):
    """
    Channels' denier (403) without a channel layer: it waits only for the server to
    report the client gone. With the default layer it also listens on a channel of its
    own, and on channels-redis core that listen did not end when the denier stopped
    (the receive outlived its cancellation), so each refused client left a task
    running, and uvicorn's shutdown waits for every such task before it exits.
    """

    channel_layer_alias = None


class AllowedOrigins:
    """
    Channels' ``AllowedHostsOriginValidator`` (its own check decides), except for a
    connection with a connect token (``?token=``): the consumer checks the token
    instead, and refuses a bad one with 403 (broadcast/clients/tokens.py). Two more changes
    for the connect path: the answer is remembered per Origin header value
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
        if carries_token(scope):
            return self.application(scope, receive, send)
        origin = None
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                origin = value  # the last one counts, as in Channels
        allowed = self._remembered.get(origin)
        if allowed is None:
            allowed = self.judge(origin)
            if len(self._remembered) >= self.MAX_REMEMBERED:
                self._remembered.clear()  # random origins from an attacker cannot grow it
            self._remembered[origin] = allowed
        if allowed:
            return self.application(scope, receive, send)
        return Denier()(scope, receive, send)

    @property
    def remembered(self) -> int:
        """How many Origin values have an answer remembered (at most MAX_REMEMBERED)."""
        return len(self._remembered)

    def judge(self, origin: bytes | None) -> bool:
        """Channels' own answer on one Origin header value (None: no header)."""
        parsed = urlparse(origin.decode("latin1")) if origin is not None else None
        allowed = bool(self._validator.valid_origin(parsed))
        if not allowed:
            # Once per Origin value while it is remembered: a refused client retrying
            # cannot flood the log.
            logger.warning("%s", refusal(origin))
        return allowed


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
