"""
Channels' ``AsyncWebsocketConsumer`` without what costs an idle connection and the
hub does not use: a layer channel per client, the coroutine around each instance,
``await_many_dispatch``'s task, and the database hop before every handler.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from broadcast.protocol import CLOSE_INTERNAL_ERROR
from broadcast.seams.servers import Scope, Writer, mark_single_callable

logger = logging.getLogger(__name__)


class LeanConsumer(AsyncWebsocketConsumer):
    """A consumer with one input, the client; ``_close`` and ``_forget`` are its subclass's."""

    # No channel-layer channel per client: the process hub's relay is the only
    # member of the broadcast group in this process. An alias that is not in
    # CHANNEL_LAYERS makes Channels skip creating one.
    channel_layer_alias = None
    # Channels' default (None) gives every consumer its own empty list at __init__.
    groups = ()

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Any:
        """
        Channels' ``as_asgi`` (same attributes), as a plain function handing back the
        new consumer's coroutine: Channels' own is a coroutine function, whose
        coroutine would stay alive, one more per idle connection, around this one.
        """
        channels_app = super().as_asgi(**initkwargs)

        def app(scope: Scope, receive: Any, send: Any) -> Any:
            return cls(**initkwargs)(scope, receive, send)

        functools.update_wrapper(app, channels_app)
        mark_single_callable(app)
        return app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
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
        except Exception:
            # Whatever failed, the client learns it and its slot is freed below.
            logger.exception("Closed a client after an unexpected error")
            with contextlib.suppress(Exception):
                await self._close(CLOSE_INTERNAL_ERROR, "internal error")
        # Not on cancellation: a server cancels an instance at its shutdown (daphne
        # kills them all before the hub's paced shutdown runs, which closes this
        # client with 1012), or after the disconnect that already unregistered it.
        self._forget()

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

    async def _close(self, code: int, reason: str, grace: float | None = None) -> Writer | None:
        raise NotImplementedError

    def _forget(self) -> None:
        raise NotImplementedError
