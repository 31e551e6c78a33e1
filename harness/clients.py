"""
Real clients for the tests, the benchmark and the fault sequencer: WebSocket frames read
with a deadline, a client that stops reading, a logged-in browser session over HTTP.
"""

from __future__ import annotations

import base64
import http.client
import http.cookiejar
import json
import os
import socket
import struct
import sys
import urllib.parse
import urllib.request


def get_json(url: str) -> tuple[int, dict]:
    """GET a JSON endpoint: (status, body), whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


async def close_code(ws, timeout: float = 15.0) -> int | None:
    """Read until the server closes; its close code, or None if the TCP just ended."""
    import asyncio

    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as closed:
        if closed.rcvd is None:  # shown with a failing test: what ended it instead
            ended = f"{closed!r}, sent {closed.sent!r}, cause {closed.__cause__!r}"
            print(f"no close frame received: {ended}", file=sys.stderr)
        return closed.rcvd.code if closed.rcvd else None


async def frames(ws, count: int, timeout: float = 10.0) -> list[dict]:
    import asyncio

    return [json.loads(await asyncio.wait_for(ws.recv(), timeout)) for _ in range(count)]


async def no_frame(ws, wait: float = 0.5) -> bool:
    import asyncio

    try:
        await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        return True
    return False


def stuck_client(port: int) -> socket.socket:
    """Completes the handshake with a tiny receive buffer, then reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/broadcast/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://127.0.0.1:{port}\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert b" 101 " in response.split(b"\r\n")[0]
    return sock


def read_to_close(sock: socket.socket, timeout: float = 20) -> tuple[list[bytes], int | None]:
    """
    Read a raw client's frames until the server's close: the text frames' payloads
    in order, and the close code, or None if the socket just ended.
    """
    sock.settimeout(timeout)
    texts: list[bytes] = []
    buffer = b""
    while True:
        while len(buffer) >= 2:
            length, offset = buffer[1] & 0x7F, 2
            if length == 126:
                offset = 4
            elif length == 127:
                offset = 10
            if len(buffer) < offset:
                break  # the extended length has not all arrived
            if offset == 4:
                length = struct.unpack("!H", buffer[2:4])[0]
            elif offset == 10:
                length = struct.unpack("!Q", buffer[2:10])[0]
            if len(buffer) < offset + length:
                break
            opcode, payload = buffer[0] & 0x0F, buffer[offset : offset + length]
            if opcode == 8:
                return texts, struct.unpack("!H", payload[:2])[0]
            if opcode == 1:
                texts.append(payload)
            buffer = buffer[offset + length :]
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return texts, None
        if not chunk:
            return texts, None
        buffer += chunk


class Browser:
    """A real HTTP client with cookies, for the admin's login and forms."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _csrf(self) -> str:
        return next(cookie.value for cookie in self.jar if cookie.name == "csrftoken")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with self.opener.open(self.base + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, path: str, data: dict) -> tuple[int, str]:
        body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": self._csrf()}, doseq=True)
        request = urllib.request.Request(
            self.base + path, data=body.encode(), headers={"Referer": self.base + path}
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def login(self, username: str, password: str) -> None:
        self.get("/admin/login/")
        status, page = self.post(
            "/admin/login/?next=/admin/", {"username": username, "password": password}
        )
        assert status == 200 and "Log out" in page, f"login failed ({status})"
