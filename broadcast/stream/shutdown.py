"""
Graceful shutdown: the hub closes its clients with 1012 (service restart) in paced
batches before the server's own shutdown runs (hooked in by :mod:`broadcast.seams.servers`),
so that their reconnects do not hit the remaining servers all at once; then it waits
until each close frame has left the process, since what a server still buffers when
its process exits never reaches the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from broadcast.protocol import CLOSE_SERVICE_RESTART
from broadcast.seams.servers.base import Writer

if TYPE_CHECKING:
    from broadcast.clients.outbox import Outbox

logger = logging.getLogger(__name__)

MAX_BATCHES = 20
CLIENTS_PER_BATCH = 100
# How often the drain looks at the buffers: neither server has an event for "empty".
BUFFER_POLL_SECONDS = 0.05
# What a close through the ASGI send is given to leave: it has no buffer to measure.
PUBLIC_CLOSE_SETTLE_SECONDS = 0.5


async def close_in_batches(outboxes: Iterable[Outbox], spread: float, until: float) -> list[Writer]:
    """
    Close every client with 1012, in batches spread over ``spread`` seconds; each
    client has until the loop time ``until`` to read its backlog and the close frame
    (the servers' own close timeouts would drop it sooner). The writers that queued
    a close frame, for :func:`drain`.
    """
    loop = asyncio.get_running_loop()
    clients = list(outboxes)
    batches = max(1, min(MAX_BATCHES, len(clients) // CLIENTS_PER_BATCH))
    size = -(-len(clients) // batches) if clients else 1
    closing: list[Writer] = []
    pending: list[asyncio.Future[None]] = []  # public-path closes, kept until done
    logger.info("Shutting down: closing %s client(s) in %s batch(es)", len(clients), batches)
    for start in range(0, len(clients), size):
        grace = max(0.0, until - loop.time())
        for outbox in clients[start : start + size]:
            writer = outbox.writer
            if writer is None:
                public_close = outbox.close_through_send(
                    CLOSE_SERVICE_RESTART, "service restart", until
                )
                pending.append(asyncio.ensure_future(public_close))
                continue
            try:
                if writer.close(CLOSE_SERVICE_RESTART, "service restart", grace):
                    closing.append(writer)
            except Exception as exc:  # one client must not stop the rest
                logger.debug("Could not close a client on shutdown: %s", exc)
            outbox.close()
        if start + size < len(clients):
            await asyncio.sleep(spread / batches)
    if pending:
        await asyncio.wait(pending, timeout=max(0.0, until - loop.time()))
        await asyncio.sleep(max(0.0, min(PUBLIC_CLOSE_SETTLE_SECONDS, until - loop.time())))
    return closing


async def drain(writers: Iterable[Writer], until: float) -> int:
    """
    Wait until every writer has handed all it buffers, its close frame last, to the
    kernel (which delivers it even after the process exits), or until the loop time
    ``until``. The number of clients still buffering then.
    """
    loop = asyncio.get_running_loop()
    closing = list(writers)
    if not closing:
        return 0
    waiting = [writer for writer in closing if _buffering(writer)]
    while waiting and loop.time() < until:
        await asyncio.sleep(min(BUFFER_POLL_SECONDS, until - loop.time()))
        waiting = [writer for writer in waiting if _buffering(writer)]
    # One poll more: daphne's public writer sees its buffer only past 64 KiB, and what
    # is under that leaves on a later loop turn.
    await asyncio.sleep(max(0.0, min(BUFFER_POLL_SECONDS, until - loop.time())))
    if waiting:
        logger.warning(
            "Shutting down with %s client(s) still behind on their backlog: "
            "what is unsent is lost to them (they resume from their last id)",
            len(waiting),
        )
    return len(waiting)


def _buffering(writer: Writer) -> bool:
    try:
        return writer.buffered() > 0
    except Exception:  # a connection torn down meanwhile has nothing left to send
        return False
