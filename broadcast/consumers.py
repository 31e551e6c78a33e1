"""The WebSocket side of the hub: accept, register, write, unregister."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.auth import get_user
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from .conf import conf
from .envelope import control_text
from .hub import Outbox, get_hub
from .transport import direct_writer, server_send

logger = logging.getLogger(__name__)

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_SLOW_CLIENT = 4008


class BroadcastConsumer(AsyncWebsocketConsumer):
    """
    One WebSocket client of the hub. It receives broadcasts; nothing it sends
    reaches other clients.
    """

    # No channel-layer channel per client: the process hub's relay is the only
    # member of the broadcast group in this process. An alias that is not in
    # CHANNEL_LAYERS makes Channels skip creating one.
    channel_layer_alias = None

    outbox: Outbox | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        # Channels' AsyncConsumer.__call__ feeds every consumer through
        # await_many_dispatch, which keeps a Task and asyncio.wait() bookkeeping alive
        # per idle connection to multiplex client and layer input. This consumer has
        # one input (no layer channel, see channel_layer_alias), so a plain loop does.
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels 4.2+ runs aclose_old_connections on a shared thread before every
        # handler; no handler here touches the database directly (the hub's own
        # database calls go through database_sync_to_async), so skip that hop,
        # which otherwise serialises every connect through one thread.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']!r}")
        await handler(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        # Channels' own version also runs aclose_old_connections on the shared
        # thread (see dispatch); the consumer holds no database connection.
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def connect(self) -> None:
        if conf.BROADCAST_REQUIRE_AUTH and not await self._authenticated():
            logger.debug("Refused an anonymous client (BROADCAST_REQUIRE_AUTH)")
            await self.close()  # before accept: the handshake gets 403
            return
        self.hub = get_hub()
        send = server_send(self.base_send)
        self.outbox = Outbox(
            send, conf.BROADCAST_MAX_PENDING_BYTES, self._on_overflow, direct_writer(send)
        )
        await self.accept()
        await self.hub.register(self.outbox, _welcome)
        logger.debug("Client connected (%s in this process)", self.hub.current)

    async def disconnect(self, code: int) -> None:
        if self.outbox is None:
            return
        self.outbox.close()
        await self.hub.unregister(self.outbox)
        logger.debug("Client disconnected with %s (%s in this process)", code, self.hub.current)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data is not None:
            await self.close(code=CLOSE_UNSUPPORTED_DATA)
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            self._reply_error("malformed JSON")
            return
        frame_type = frame.get("type") if isinstance(frame, dict) else None
        if frame_type == "hub.ping":
            self.outbox.push_text(control_text("hub.pong", None, timezone.now()))
        else:
            self._reply_error(f"unknown frame type {frame_type!r}; clients cannot publish")

    async def _authenticated(self) -> bool:
        """
        The user is resolved here, only when it is needed: AuthMiddleware would
        resolve it on every connect, a database thread hop per client.
        """
        user = self.scope.get("user")
        if user is None:
            if "session" not in self.scope:
                raise ImproperlyConfigured(
                    "BROADCAST_REQUIRE_AUTH needs the session (SessionMiddlewareStack or "
                    "AuthMiddlewareStack) around the broadcast route."
                )
            user = await get_user(self.scope)
        return bool(getattr(user, "is_authenticated", False))

    def _reply_error(self, reason: str) -> None:
        self.outbox.push_text(control_text("hub.error", {"error": reason}, timezone.now()))

    def _on_overflow(self) -> None:
        logger.warning(
            "Dropped a slow client: over %s pending bytes", conf.BROADCAST_MAX_PENDING_BYTES
        )
        asyncio.ensure_future(self.close(code=CLOSE_SLOW_CLIENT))


def _welcome(last_id: int) -> str:
    return control_text("hub.welcome", {"last_id": last_id}, timezone.now())
