"""
Graceful shutdown under daphne.

On SIGTERM daphne cancels every application instance and stops: clients see 1006
and ``disconnect()`` never runs. The hub adds a "before shutdown" trigger to the
Twisted reactor that returns a Deferred, so the reactor waits while the hub closes
every client with 1012 (service restart) in paced batches and marks its count row
stopped. uvicorn needs no hook: it sends 1012 to every WebSocket itself and reports
each disconnect to the consumer.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)


def install(hub: Any) -> bool:
    """Register ``hub.shutdown`` with daphne's reactor; False when not under daphne."""
    # Look the reactor up without importing it: importing installs a default one.
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or "daphne.server" not in sys.modules or not reactor.running:
        return False
    from twisted.internet.defer import Deferred

    async def shutdown() -> None:
        try:
            await hub.shutdown()
        except Exception:  # Twisted would drop it silently and stop at once
            logger.exception("Graceful shutdown failed")

    def before_shutdown() -> Deferred:
        return Deferred.fromFuture(asyncio.ensure_future(shutdown()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    return True
