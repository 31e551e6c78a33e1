"""
The seam between the hub and the servers' private parts: one module per server,
each probed once a process before its fast path is used (see :mod:`.base`).

With ``BROADCAST_FAST_PATH = False``, or on a server or version the probes do not
admit, every message goes through the ASGI ``send``: the public path. On daphne, a
writer made of public API still bounds slow clients and sends the hub's close codes
(:mod:`.daphne`); on uvicorn, the ASGI ``send`` does both.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from broadcast.conf import conf
from broadcast.seams.servers import daphne, uvicorn
from broadcast.seams.servers.asgi import Scope, mark_single_callable, server_send
from broadcast.seams.servers.base import Writer

__all__ = [
    "Scope",
    "Writer",
    "direct_writer",
    "install_shutdown",
    "mark_single_callable",
    "server_send",
]


def direct_writer(send: Any) -> Writer | None:
    """A direct writer for the server behind ``send`` (unwrapped), or None: use ``send``."""
    fast = conf.BROADCAST_FAST_PATH
    if daphne.serves(send):
        return daphne.writer_for(send, fast=fast)
    if fast and uvicorn.serves(send):
        return uvicorn.writer_for(send)
    return None


def install_shutdown(run: Callable[[], Coroutine[Any, Any, None]]) -> bool:
    """Run ``run()`` ahead of the server's own shutdown; False on a server we do not know."""
    return daphne.install_shutdown(run) or uvicorn.install_shutdown(run)
