from __future__ import annotations

from typing import Any

from channels.sessions import SessionMiddlewareStack
from django.urls import path

from .conf import conf
from .consumers import BroadcastConsumer

websocket_urlpatterns = [
    path("ws/broadcast/", BroadcastConsumer.as_asgi()),
]


class SessionIfAuthRequired:
    """
    Channels' session middleware around ``inner``, only while BROADCAST_REQUIRE_AUTH
    is on (the consumer then resolves the user from the session).

    Every middleware layer keeps its own copy of the scope alive for as long as the
    connection lasts, and the session stack adds two plus a session wrapper: about
    a tenth of an idle connection's memory, measured, for nothing when the hub is
    open to all. Decided per connection, so the setting can change at run time.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.with_session = SessionMiddlewareStack(inner)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        app = self.with_session if conf.BROADCAST_REQUIRE_AUTH else self.inner
        return await app(scope, receive, send)
