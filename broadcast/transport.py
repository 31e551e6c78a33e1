"""
Writing one prepared frame to many sockets.

Server-to-client WebSocket frames are not masked, so a broadcast is the same bytes
for every client: the hub frames it once per process (like gorilla/websocket's
``PreparedMessage``) and writes those bytes to each client's transport. On the ASGI
path, the server would instead encode the text and build the frame again for every
client, which profiling showed to be most of the hub's cost per delivery.

A direct writer exists only for servers whose connection objects we know (daphne,
and uvicorn's ``websockets-sansio`` protocol); it writes only while the server says
the connection is open, and reports what the transport holds unsent, which is the
bound a slow client is measured against (daphne has no backpressure of its own:
daphne issue #170). For any other server, ``direct_writer`` returns None and the hub
uses the ASGI ``send``.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol


class Writer(Protocol):
    def write(self, frame: bytes, buffered: int) -> bool:
        """
        Write a prepared frame now; False if the connection is not open. ``buffered``
        is ``buffered()`` as the caller has just measured it (once per delivery).
        """

    def buffered(self) -> int:
        """Bytes written but not yet accepted by the socket."""

    def close(self, code: int, reason: str, grace: float | None = None) -> bool:
        """
        Queue a close frame behind what is buffered; False if already closing.
        ``grace``: how long the client has to answer it, where the server times
        the close handshake itself (None: the server's own default).
        """

    def abort(self) -> None:
        """Drop the TCP connection now, discarding what is buffered."""


def text_frame(data: bytes) -> bytes:
    """An unmasked, unfragmented text frame (RFC 6455, section 5.2)."""
    length = len(data)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 65536:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + data


def server_send(send: Any) -> Any:
    """
    The server's own ``send`` beneath Channels' session middleware.

    ``AuthMiddlewareStack`` wraps ``send`` in ``InstanceSessionWrapper.send``, which
    acts only on ``http.response.start`` (to save the session and set its cookie) and
    passes every ``websocket.send`` straight through.
    """
    while getattr(send, "__name__", "") == "send" and hasattr(
        getattr(send, "__self__", None), "real_send"
    ):
        send = send.__self__.real_send
    return send


class DaphneWriter:
    """
    daphne: autobahn's protocol over a Twisted TCP transport.

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
        # twisted.internet.abstract.FileDescriptor keeps unsent bytes in dataBuffer
        # (from offset on) and in _tempDataBuffer (_tempDataLen bytes).
        transport = self._transport
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    def close(self, code: int, reason: str, grace: float | None = None) -> bool:
        # daphne's ASGI close drops the reason. autobahn's public sendClose refuses
        # codes outside 1000 and 3000-4999 (1012 among them), so this uses the
        # frame-level call daphne itself uses for 1011; autobahn then drops the
        # connection if the client does not answer the close within the protocol's
        # closeHandshakeTimeout (1 s unless daphne's factory sets it, and it does not):
        # too short for a slow client to read its backlog and reach the close frame.
        if self._protocol.state != self._open:
            return False
        if grace is not None:
            self._protocol.closeHandshakeTimeout = grace
        self._protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode(), isReply=False)
        return True

    def abort(self) -> None:
        self._transport.abortConnection()


class SansioWriter:
    """uvicorn's websockets-sansio protocol over an asyncio transport."""

    __slots__ = ("_server", "_transport", "_conn", "_open")

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
        return self._transport.get_write_buffer_size()

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


def direct_writer(send: Any) -> Writer | None:
    """A writer for the server behind ``send`` (unwrapped), or None if unknown."""
    if isinstance(send, functools.partial) and send.args:
        protocol = send.args[0]
        if getattr(send.func, "__qualname__", "") == "Server.handle_reply" and hasattr(
            protocol, "STATE_OPEN"
        ):
            transport = getattr(protocol, "transport", None)
            if transport is not None and hasattr(transport, "dataBuffer"):
                return DaphneWriter(protocol)
        return None
    server = getattr(send, "__self__", None)
    if type(server).__name__ == "WebSocketsSansIOProtocol" and hasattr(server, "conn"):
        return SansioWriter(server, _websockets_open_state())
    return None


@functools.cache
def _websockets_open_state() -> Any:
    # Imported on first use (websockets is uvicorn's dependency, not ours), once: an
    # import statement costs microseconds on every connect even when cached.
    from websockets.protocol import State

    return State.OPEN
