"""
Graceful shutdown: on SIGTERM, the hub closes its clients with 1012 (service
restart) in paced batches and marks its count row stopped, before the server's own
shutdown runs.

- daphne cancels every application instance and stops: clients would see 1006 and
  ``disconnect()`` would never run. The hub adds a "before shutdown" trigger to the
  Twisted reactor that returns a Deferred, so the reactor waits for it.
- uvicorn sends 1012 to every WebSocket at once, before an application can act (the
  ASGI lifespan shutdown comes after). The hub chains its own SIGTERM/SIGINT handler
  in front of uvicorn's: the first signal runs the paced shutdown, then hands the
  signal to uvicorn, which finds no client left; a second signal goes to uvicorn at
  once (its forced exit).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from typing import Any

logger = logging.getLogger(__name__)


def install(hub: Any) -> bool:
    """Run ``hub.shutdown`` ahead of the server's own shutdown; False if unknown server."""
    return _install_daphne(hub) or _install_uvicorn(hub)


async def _shutdown(hub: Any) -> None:
    try:
        await hub.shutdown()
    except Exception:  # the server's shutdown must run regardless
        logger.exception("Graceful shutdown failed")


def _install_uvicorn(hub: Any) -> bool:
    server_module = sys.modules.get("uvicorn.server")
    if server_module is None or threading.current_thread() is not threading.main_thread():
        return False
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        uvicorn_handler = signal.getsignal(signum)
        if not isinstance(getattr(uvicorn_handler, "__self__", None), server_module.Server):
            return False  # not uvicorn's handler (already chained, or uvicorn changed)
        signal.signal(signum, _chained(hub, loop, uvicorn_handler))
    return True


def _chained(hub: Any, loop: asyncio.AbstractEventLoop, uvicorn_handler: Any) -> Any:
    state = {"started": False}

    def handler(signum: int, frame: Any) -> None:
        if state["started"]:
            uvicorn_handler(signum, frame)
            return
        state["started"] = True

        def start() -> None:
            task = loop.create_task(_shutdown(hub))
            task.add_done_callback(lambda _: uvicorn_handler(signum, frame))

        loop.call_soon_threadsafe(start)

    return handler


def _install_daphne(hub: Any) -> bool:
    # Look the reactor up without importing it: importing installs a default one.
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or "daphne.server" not in sys.modules or not reactor.running:
        return False
    from twisted.internet.defer import Deferred

    def before_shutdown() -> Deferred:
        return Deferred.fromFuture(asyncio.ensure_future(_shutdown(hub)))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    return True
