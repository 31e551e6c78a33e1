"""
uvicorn's private parts: its ``websockets-sansio`` protocol over an asyncio
transport, and its signal handlers. Nothing else in the app names them.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from types import FrameType
from typing import Any

from broadcast.seams.servers.base import Probed, Proven, probe

PROTOCOL_CLASS = "WebSocketsSansIOProtocol"
# The versions CI installs on its oldest and newest legs (ci/constraints-*.txt).
PROVEN = (Proven("uvicorn", "0.53", "0.55"), Proven("websockets", "14.1", "18"))
# What the writer reads and calls on uvicorn's protocol object.
PROTOCOL_NAMES = ("close_sent", "disconnected", "writable", "conn", "transport", "send")

# This process's probe answer: None until the first client (or publish) asks.
probed: Probed | None = None


def serves(send: Any) -> bool:
    """Whether ``send`` is the bound ``send`` of uvicorn's websockets-sansio protocol."""
    return type(getattr(send, "__self__", None)).__name__ == PROTOCOL_CLASS


def writer_for(send: Any) -> SansioWriter | None:
    """A direct writer for uvicorn's ``send``, if the probe passed on this process."""
    server = send.__self__
    global probed
    if probed is None:
        probed = probe("uvicorn", PROVEN, lambda: _missing(server))
    return SansioWriter(server, _open_state()) if probed.safe else None


def _missing(server: Any) -> Iterator[str]:
    for name in PROTOCOL_NAMES:
        if not hasattr(server, name):
            yield f"{PROTOCOL_CLASS}.{name}"
    if not hasattr(getattr(server, "conn", None), "state"):
        yield "websockets ServerProtocol.state"
    try:
        _open_state()
    except (ImportError, AttributeError):
        yield "websockets.protocol.State.OPEN"


def _open_state() -> Any:
    # websockets is uvicorn's dependency, not ours: imported only behind uvicorn.
    from websockets.protocol import State

    return State.OPEN


class SansioWriter:
    """A client of uvicorn's websockets-sansio protocol, written to through its transport."""

    __slots__ = ("_server", "_transport", "_conn", "_open")
    writes_itself = True

    def __init__(self, server: Any, open_state: Any) -> None:
        self._server = server
        self._transport = server.transport
        self._conn = server.conn
        self._open = open_state

    def write(self, frame: bytes, buffered: int) -> bool:
        server = self._server
        if server.close_sent or server.disconnected or self._conn.state is not self._open:
            return False
        self._transport.write(frame)
        return True

    def buffered(self) -> int:
        return int(self._transport.get_write_buffer_size())

    def close(self, code: int, reason: str, grace: float | None = None) -> bool:
        # uvicorn's own close (the disconnect event, the close timer and all), minus
        # its first step: waiting for the socket to drain, which a client that does
        # not read never allows. With the gate open it completes in one step.
        server = self._server
        if self._conn.state is not self._open or server.close_sent or server.disconnected:
            return False
        server.writable.set()
        coroutine = server.send({"type": "websocket.close", "code": code, "reason": reason})
        try:
            coroutine.send(None)
        except StopIteration:
            return True
        except Exception:  # ClientDisconnected: the client left as the close was built
            return False
        coroutine.close()
        return False

    def abort(self) -> None:
        self._transport.abort()


def install_shutdown(run: Callable[[], Coroutine[Any, Any, None]]) -> bool:
    """
    Run ``run()`` before uvicorn's own shutdown; False if this is not uvicorn.

    uvicorn sends 1012 to every WebSocket at once, before an application can act (the
    ASGI lifespan shutdown comes after). This chains a SIGTERM/SIGINT handler in front
    of uvicorn's, found by its owner: the first signal runs ``run()``, then hands the
    signal to uvicorn, which finds no client left; a second goes to uvicorn at once.
    """
    server_module = sys.modules.get("uvicorn.server")
    if server_module is None or threading.current_thread() is not threading.main_thread():
        return False
    server_class = getattr(server_module, "Server", None)
    handlers = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if server_class is None or not callable(handler):
            return False
        if not isinstance(getattr(handler, "__self__", None), server_class):
            return False  # not uvicorn's handler (already chained, or uvicorn changed)
        handlers[signum] = handler
    loop = asyncio.get_running_loop()
    for signum, handler in handlers.items():
        signal.signal(signum, _chained(run, loop, handler))
    return True


def _chained(
    run: Callable[[], Coroutine[Any, Any, None]],
    loop: asyncio.AbstractEventLoop,
    uvicorn_handler: Callable[[int, FrameType | None], Any],
) -> Callable[[int, FrameType | None], None]:
    started = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal started
        if started:
            uvicorn_handler(signum, frame)
            return
        started = True

        def start() -> None:
            task = loop.create_task(run())
            task.add_done_callback(lambda _: uvicorn_handler(signum, frame))

        loop.call_soon_threadsafe(start)

    return handler
