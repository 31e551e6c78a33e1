"""
How a connection is closed: once, with the hub's close code and reason, through the
server's own frame-level call where there is one (daphne's ASGI close refuses most
codes this hub uses and drops the reason: see ``close_through_send``); from a callback
(a revocation, a token's expiry, a slow client's cut) as a task of its own.

A mixin of the consumer, as its access rules are.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from broadcast import metrics
from broadcast.conf import conf
from broadcast.protocol import CLOSE_REVOKED, CLOSE_SLOW_CLIENT
from broadcast.seams.servers import Writer, direct_writer, server_send
from broadcast.seams.servers.asgi import close_through_send

if TYPE_CHECKING:
    from broadcast.clients.outbox import Outbox
    from broadcast.stream.hub import ProcessHub

# The consumer's logger: a close is a line of the connection's story, where it is read.
logger = logging.getLogger("broadcast.clients.consumer")

# How long a cut slow client has to read up to its close frame before its TCP
# connection is dropped, and what it holds in server memory with it.
SLOW_CLIENT_GRACE_SECONDS = 5.0


class Closing:
    """The consumer's closes; ``outbox``, ``hub`` and ``base_send`` are the consumer's."""

    outbox: Outbox | None
    hub: ProcessHub
    base_send: Any
    _closer: asyncio.Task[Any] | None = None  # a close begun from a callback
    _closing = False

    def _end(self, code: int, reason: str) -> None:
        """Close with ``code``, from a callback (a revocation, a token's expiry)."""
        if not self._closing:
            self._closer = asyncio.ensure_future(self._close(code, reason))

    def _on_end(self, code: int, reason: str) -> None:
        if code == CLOSE_REVOKED:
            metrics.revocations.inc()
        self._end(code, reason)

    def _on_overflow(self) -> None:
        metrics.slow_client_cuts.inc()
        logger.warning(
            "Dropped a slow client (close %s): over %s bytes pending",
            CLOSE_SLOW_CLIENT,
            conf.BROADCAST_MAX_PENDING_BYTES,
        )
        self._closer = asyncio.ensure_future(self._cut_slow_client())

    async def _cut_slow_client(self) -> None:
        writer = await self._close(CLOSE_SLOW_CLIENT, "slow client", SLOW_CLIENT_GRACE_SECONDS)
        if writer is None:
            return
        # The close frame waits behind the backlog; a client that reads it and
        # answers is closed cleanly, one that does not read is dropped after the grace.
        await asyncio.sleep(SLOW_CLIENT_GRACE_SECONDS)
        if self.outbox in self.hub.clients:  # still connected
            writer.abort()

    async def _close(self, code: int, reason: str, grace: float | None = None) -> Writer | None:
        """
        Close an accepted connection, once. Returns the direct writer that queued the
        close frame (it can still drop the connection), or None: the close went
        through the ASGI send, or was under way already. daphne's ASGI close refuses
        most codes this hub uses and drops the reason (see ``close_through_send``);
        the writers use the protocols' own frame-level calls.
        """
        if self._closing:
            return None
        self._closing = True
        writer = self.outbox.writer if self.outbox is not None else None
        if writer is None:
            writer = direct_writer(server_send(self.base_send))
        if self.outbox is not None:
            self.outbox.close()
        if writer is not None:
            try:
                if writer.close(code, reason, grace):
                    return writer
            except Exception as exc:  # a server internal that changed under us
                logger.warning("Direct close failed (%s); closing through the ASGI send", exc)
        await close_through_send(self.base_send, code, reason)
        return None
