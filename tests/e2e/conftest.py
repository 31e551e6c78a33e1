"""
Real servers for end-to-end tests: daphne processes on free loopback ports, a fresh
migrated database (SQLite file, or PostgreSQL when DATABASE_URL points there), and
manage.py run as separate processes against the same database and Redis.
"""

from __future__ import annotations

import base64
import http.client
import http.cookiejar
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[2]
E2E_REDIS_URL = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/10")
ADMIN_USER, ADMIN_PASSWORD = "admin", "e2e-admin-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Site:
    """An environment (database, optional Redis) shared by servers and commands."""

    env: dict[str, str]
    logs: Path

    def with_redis(self, url: str) -> Site:
        return self.with_env(REDIS_URL=url)

    def with_env(self, **env: str) -> Site:
        return Site({**self.env, **env}, self.logs)

    def manage(self, *args: str, input: str | None = None, check: bool = True, timeout=60):
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
        return result

    def shell(self, code: str) -> str:
        return self.manage("shell", "--no-imports", "-c", code).stdout

    def live_total(self) -> int:
        last = self.manage("hubstatus").stdout.strip().splitlines()[-1]
        return int(last.split("Live total: ")[1].split()[0])

    def wait_for_live_total(self, expected: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (total := self.live_total()) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"live total stayed {total}, expected {expected}")
            time.sleep(0.2)


SERVER_COMMANDS = {
    "daphne": lambda port: [
        sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
        "hubsite.asgi:application",
    ],
    "uvicorn": lambda port: [
        sys.executable, "-m", "uvicorn", "hubsite.asgi:application", "--host", "127.0.0.1",
        "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--ws", "websockets-sansio", "--lifespan", "off",
    ],
}  # fmt: skip


@dataclass
class Server:
    """One server process (daphne by default) serving hubsite.asgi on a free port."""

    site: Site
    kind: str = "daphne"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/broadcast/"

    def start(self) -> Server:
        log = open(self.site.logs / f"server-{self.port}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            SERVER_COMMANDS[self.kind](self.port),
            cwd=ROOT, env=self.site.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.kind} exited:\n{self.log()}")
            try:  # any HTTP answer will do (a production site redirects to HTTPS)
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/admin/login/")
                conn.getresponse()
                conn.close()
                return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind} did not answer on {self.port}:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return (self.site.logs / f"server-{self.port}.log").read_text()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def client(self, query: str = "", origin: str | None = None):
        """A connected WebSocket client whose welcome frame has been read."""
        ws = await connect(self.ws_url + query, origin=origin or self.http, max_size=2**22)
        ws.welcome = json.loads(await ws.recv())
        assert ws.welcome["type"] == "hub.welcome"
        return ws


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


def process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (T: stopped, Z: a zombie), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def running(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")


def cmdline(pid: int) -> bytes:
    """What ``pid`` runs, or nothing once it has gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


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


def _fresh_database(tmp_path: Path, base: str | None = None) -> tuple[str, callable]:
    base = base or os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        return f"sqlite:///{tmp_path / 'e2e.sqlite3'}", lambda: None
    import psycopg

    name = f"hub_e2e_{uuid.uuid4().hex[:12]}"
    parts = urllib.parse.urlsplit(base)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}")), drop


def make_site(
    tmp: Path, heartbeat: float = 0.3, database: str | None = None
) -> tuple[Site, callable]:
    """A migrated database with an admin user (a fresh one on the server ``database``
    names, by default DATABASE_URL's), the environment to reach it, and the function
    that drops that database."""
    url, drop = _fresh_database(tmp, database)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "DJANGO_SETTINGS_MODULE", "DATABASE_URL"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="hubsite.settings",
        DATABASE_URL=url,
        BROADCAST_HEARTBEAT_SECONDS=str(heartbeat),
        PYTHONUNBUFFERED="1",
    )
    instance = Site(env, tmp)
    instance.manage("migrate", "--no-input")
    instance.shell(
        "from django.contrib.auth.models import User;"
        f"User.objects.create_superuser({ADMIN_USER!r}, 'admin@example.com', {ADMIN_PASSWORD!r})"
    )
    return instance, drop


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Site:
    instance, drop = make_site(tmp_path_factory.mktemp("e2e"))
    yield instance
    drop()


@pytest.fixture
def redis_site(site) -> Site:
    """The site with REDIS_URL set; fails (never skips) when Redis does not answer."""
    client = redis.Redis.from_url(E2E_REDIS_URL, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.exceptions.RedisError as exc:
        pytest.fail(f"Redis is not answering at {E2E_REDIS_URL} ({exc}); the Redis tests need it.")
    return site.with_redis(E2E_REDIS_URL)


@pytest.fixture
def start_server():
    servers: list[Server] = []

    def start(site: Site, kind: str = "daphne") -> Server:
        server = Server(site, kind).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
