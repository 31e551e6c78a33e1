"""
daphne's private parts: autobahn's protocol over a Twisted TCP transport, and
daphne's shutdown in Twisted's reactor. Nothing else in the app names them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from .base import Proven, Verdict, probe

logger = logging.getLogger(__name__)

# The versions CI installs on its oldest and newest legs (ci/constraints-*.txt).
PROVEN = (
    Proven("daphne", "4.2.3", "5"),
    Proven("Twisted", "22.4", "27"),
    Proven("autobahn", "22.4.2", "27"),
)
# What the writer reads and calls on autobahn's protocol and Twisted's transport.
PROTOCOL_NAMES = ("STATE_OPEN", "state", "transport", "sendCloseFrame")
TRANSPORT_NAMES = (
    "dataBuffer", "offset", "_tempDataLen", "disconnecting", "write", "abortConnection",
)  # fmt: skip

# This process's probe answer: None until the first client (or publish) asks.
verdict: Verdict | None = None


def serves(send: Any) -> bool:
    """Whether ``send`` is daphne's: ``partial(Server.handle_reply, protocol)``."""
    return (
        isinstance(send, functools.partial)
        and bool(send.args)
        and getattr(send.func, "__qualname__", "") == "Server.handle_reply"
    )


def writer_for(send: Any) -> DaphneWriter | None:
    """A direct writer for daphne's ``send``, if the probe passed on this process."""
    protocol = send.args[0]
    global verdict
    if verdict is None:
        verdict = probe("daphne", PROVEN, lambda: _missing(protocol))
    return DaphneWriter(protocol) if verdict.safe else None


def _missing(protocol: Any) -> Iterator[str]:
    for name in PROTOCOL_NAMES:
        if not hasattr(protocol, name):
            yield f"autobahn protocol .{name}"
    transport = getattr(protocol, "transport", None)
    for name in TRANSPORT_NAMES:
        if not hasattr(transport, name):
            yield f"Twisted transport .{name}"


class DaphneWriter:
    """
    Twisted's ``write`` always buffers and registers the socket with the selector,
    writing on a later loop turn: two ``epoll_ctl`` calls and a send per delivery.
    When Twisted holds nothing for this client, the frame is offered to the socket
    first, as asyncio and uvloop transports do, and only what the kernel does not
    take goes through Twisted's buffer (which keeps the order). Never on TLS, where
    the transport must encrypt.
    """

    __slots__ = ("_protocol", "_transport", "_socket", "_open")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._open = protocol.STATE_OPEN
        plain = not getattr(self._transport, "TLS", False)
        self._socket = getattr(self._transport, "socket", None) if plain else None

    def write(self, frame: bytes, buffered: int) -> bool:
        if self._protocol.state != self._open:
            return False
        transport = self._transport
        if self._socket is not None and not buffered and not transport.disconnecting:
            try:
                sent = self._socket.send(frame)
            except OSError:  # EAGAIN, or a dead socket that Twisted will report
                sent = 0
            if sent == len(frame):
                return True
            frame = frame[sent:]
        transport.write(frame)
        return True

    def buffered(self) -> int:
        # FileDescriptor keeps unsent bytes in dataBuffer (from offset on) and in
        # _tempDataBuffer (_tempDataLen bytes).
        transport = self._transport
        return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)

    def close(self, code: int, reason: str, grace: float | None = None) -> bool:
        # daphne's ASGI close drops the reason, and autobahn's public sendClose refuses
        # codes outside 1000 and 3000-4999 (1012 among them): this is the frame-level
        # call daphne itself uses for 1011. autobahn drops a connection whose close
        # goes unanswered for closeHandshakeTimeout (1 s, daphne does not change it):
        # too short for a slow client to read its backlog up to the close frame.
        if self._protocol.state != self._open:
            return False
        if grace is not None:
            self._protocol.closeHandshakeTimeout = grace
        self._protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode(), isReply=False)
        return True

    def abort(self) -> None:
        self._transport.abortConnection()


def install_shutdown(run: Callable[[], Coroutine[Any, Any, None]]) -> bool:
    """
    Run ``run()`` before daphne's own shutdown; False if this is not daphne.

    daphne cancels every application instance and stops: clients would see 1006 and
    ``disconnect()`` would never run. A "before shutdown" trigger that returns a
    Deferred makes Twisted's reactor wait for it (public Twisted API).
    """
    # Look the reactor up without importing it: importing installs a default one.
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or "daphne.server" not in sys.modules or not reactor.running:
        return False
    from twisted.internet.defer import Deferred

    def before_shutdown() -> Deferred[None]:
        return Deferred.fromFuture(asyncio.ensure_future(run()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    return True
