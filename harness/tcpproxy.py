"""
A TCP proxy on a loopback port that a test or the fault sequencer can cut, slow and
restore: what a server process sees when its database (or Redis) fails over, is
overloaded, or sits behind a network that drops.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class TcpProxy:
    """Relays 127.0.0.1:``port`` to ``target``; ``cut()`` drops every connection and
    refuses new ones (accepted and closed at once, as a restarting server does) until
    ``restore()``; ``slow(seconds)`` delays each chunk relayed."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._delay = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="tcpproxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            self._cut = True
            for sock in self._open:
                _drop(sock)
            self._open.clear()

    def slow(self, seconds: float) -> None:
        """Delay every chunk relayed from now on by ``seconds`` (0: no delay)."""
        self._delay = seconds

    def restore(self) -> None:
        self._cut, self._delay = False, 0.0

    def close(self) -> None:
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut:
                _drop(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _drop(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                if self._delay:
                    time.sleep(self._delay)
                if self._cut:
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        with self._lock:
            self._open.discard(source)
            self._open.discard(sink)
        _drop(source)
        _drop(sink)


def _drop(sock: socket.socket) -> None:
    # shutdown() first: it wakes the thread blocked in this socket's recv (close alone
    # does not); a linger of 0 makes the close a reset, as a dead peer's would be.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
