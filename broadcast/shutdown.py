"""
Graceful shutdown: the hub closes its clients with 1012 (service restart) in paced
batches before the server's own shutdown runs (hooked in by :mod:`broadcast.servers`),
so that their reconnects do not hit the remaining servers all at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from .outbox import Outbox

logger = logging.getLogger("broadcast.hub")

CLOSE_SERVICE_RESTART = 1012
MAX_BATCHES = 20
CLIENTS_PER_BATCH = 100


async def close_in_batches(outboxes: Iterable[Outbox], spread: float) -> None:
    """Close every client with 1012, in batches spread over ``spread`` seconds."""
    clients = list(outboxes)
    batches = max(1, min(MAX_BATCHES, len(clients) // CLIENTS_PER_BATCH))
    size = -(-len(clients) // batches) if clients else 1
    pending: list[asyncio.Future[None]] = []  # public-path closes, kept until done
    logger.info("Shutting down: closing %s client(s) in %s batch(es)", len(clients), batches)
    for start in range(0, len(clients), size):
        for outbox in clients[start : start + size]:
            if outbox.writer is None:
                closing = outbox.close_through_send(CLOSE_SERVICE_RESTART, "service restart")
                pending.append(asyncio.ensure_future(closing))
                continue
            try:
                outbox.writer.close(CLOSE_SERVICE_RESTART, "service restart")
            except Exception as exc:  # one client must not stop the rest
                logger.debug("Could not close a client on shutdown: %s", exc)
            outbox.close()
        if start + size < len(clients):
            await asyncio.sleep(spread / batches)
    if pending:
        await asyncio.wait(pending, timeout=spread)
