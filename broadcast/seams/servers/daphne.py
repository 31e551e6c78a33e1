"""
daphne's internals: autobahn's protocol over a Twisted TCP transport, and daphne's
shutdown in Twisted's reactor. Nothing else in the app names them.

Two writers. :class:`DaphneWriter`, the fast path, writes prepared frames to the
socket and reads Twisted's private buffer to measure a client's backlog.
:class:`PausedWriter`, the public path, uses public API only: messages go through
the ASGI send, the backlog is learnt from the transport's documented
``producerPaused`` flag (set while its buffer is full, cleared once it is empty), and
closes use autobahn's frame-level close, since daphne's ASGI close refuses most of the
codes the hub sends.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from broadcast.seams.servers.base import Probed, Proven, probe

# The versions CI installs on its oldest and newest legs (ci/constraints-*.txt).
PROVEN = (
    Proven("daphne", "4.2.3", "5"),
    Proven("Twisted", "22.4", "27"),
    Proven("autobahn", "22.4.2", "27"),
)
# What each writer reads and calls on autobahn's protocol and Twisted's transport.
FAST_NAMES = (
    ("STATE_OPEN", "state", "transport", "sendCloseFrame"),
    ("dataBuffer", "offset", "_tempDataLen", "disconnecting", "disconnected", "write",
     "abortConnection"),
)  # fmt: skip
PUBLIC_NAMES = (
    ("STATE_OPEN", "state", "transport", "sendCloseFrame"),
    ("producerPaused", "streamingProducer", "disconnected", "abortConnection"),
)
# How long a closed client has to answer the close frame before it is dropped (the
# slow-client cut gives its own grace), and the second txaio's timer may take off it.
CLOSE_ANSWER_SECONDS = 5.0
TIMER_ROUNDING_SECONDS = 1.0
# Twisted's default FileDescriptor.bufferSize: a paused producer means at least this much.
TWISTED_BUFFER_SIZE = 2**16

# This process's probe answers: None until the first client asks.
probed: Probed | None = None
public_verdict: Probed | None = None


def serves(send: Any) -> bool:
    """Whether ``send`` is daphne's: ``partial(Server.handle_reply, protocol)``."""
    return (
        isinstance(send, functools.partial)
        and bool(send.args)
        and getattr(send.func, "__qualname__", "") == "Server.handle_reply"
    )


def writer_for(send: Any, *, fast: bool) -> DaphneWriter | PausedWriter | None:
    """
    The fast writer for daphne's ``send`` if ``fast`` and its probe passed in this
    process, else the public one if its probe passed, else None (the ASGI send only).
    """
    global probed, public_verdict
    protocol = send.args[0]
    if fast:
        if probed is None:
            probed = probe("daphne", PROVEN, lambda: _missing(protocol, *FAST_NAMES))
        if probed.safe:
            return DaphneWriter(protocol)
    if public_verdict is None:
        public_verdict = probe(
            "daphne public writer", (), lambda: _missing(protocol, *PUBLIC_NAMES)
        )
    if not public_verdict.safe:
        return None
    if not protocol.transport.streamingProducer:
        return None  # nothing for the transport to pause: no backlog to learn of
    return PausedWriter(protocol)


def _missing(
    protocol: Any, on_protocol: tuple[str, ...], on_transport: tuple[str, ...]
) -> Iterator[str]:
    for name in on_protocol:
        if not hasattr(protocol, name):
            yield f"autobahn protocol .{name}"
    transport = getattr(protocol, "transport", None)
    for name in on_transport:
        if not hasattr(transport, name):
            yield f"Twisted transport .{name}"


def _close(protocol: Any, code: int, reason: str, grace: float | None) -> bool:
    # daphne's ASGI close drops the reason, and autobahn's sendClose refuses codes
    # outside 1000 and 3000-4999 (1012 among them): this is the frame-level call
    # daphne itself uses for 1011. autobahn drops a connection whose close goes
    # unanswered for closeHandshakeTimeout (1 s, daphne does not change it), on
    # txaio's batched timer, which rounds the deadline down to a whole second: it can
    # drop at once. A client still sending then gets a reset that erases the close
    # frame it had not read yet, so the wait is longer and a second is added back.
    if protocol.state != protocol.STATE_OPEN:
        return False
    answer = CLOSE_ANSWER_SECONDS if grace is None else grace
    protocol.closeHandshakeTimeout = answer + TIMER_ROUNDING_SECONDS
    protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode(), isReply=False)
    return True


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
    writes_itself = True

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
        # _tempDataBuffer (_tempDataLen bytes), and keeps them once the connection is
        # lost, when none of them will ever be sent.
        transport = self._transport
        if transport.disconnected:
            return 0
        return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)

    def close(self, code: int, reason: str, grace: float | None = None) -> bool:
        return _close(self._protocol, code, reason, grace)

    def abort(self) -> None:
        self._transport.abortConnection()


class PausedWriter:
    """
    The public path on daphne. ``write`` leaves every message to the ASGI send and
    only counts what is written while the transport has its producer paused (daphne's
    HTTP channel stays registered as the producer after the upgrade), which it has
    while more than its ``bufferSize`` is unsent: so the backlog is known to within
    that buffer, and a slow client is still cut.
    """

    __slots__ = ("_protocol", "_transport", "_floor", "_since_paused")
    writes_itself = False

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._floor = int(getattr(self._transport, "bufferSize", TWISTED_BUFFER_SIZE))
        self._since_paused = 0

    def write(self, frame: bytes, buffered: int) -> bool:
        if self._transport.producerPaused:
            self._since_paused += len(frame)
        else:
            self._since_paused = 0
        return False  # not written here: the ASGI send writes it

    def buffered(self) -> int:
        transport = self._transport
        if transport.disconnected or not transport.producerPaused:
            return 0
        return self._floor + self._since_paused

    def close(self, code: int, reason: str, grace: float | None = None) -> bool:
        return _close(self._protocol, code, reason, grace)

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
