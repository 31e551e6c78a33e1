"""
Real servers for the tests, the benchmark and the fault sequencer: daphne or uvicorn
processes on free loopback ports, a fresh migrated database (SQLite file, or
PostgreSQL), and manage.py run as separate processes against the same database and
Redis.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
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


HUB_APP = "hubsite.asgi:application"
# The same application after harness.constants has set HUB_CONSTANTS (faults, bench).
HARNESS_APP = "harness.asgi:application"
SERVER_COMMANDS = {
    "daphne": lambda port, app=HUB_APP: [
        sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app,
    ],
    "uvicorn": lambda port, app=HUB_APP: [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
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
    app: str = HUB_APP
    process: subprocess.Popen | None = None
    flags: tuple[str, ...] = ()  # more command-line options (the documented ones)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/broadcast/"

    def start(self) -> Server:
        log = open(self.site.logs / f"server-{self.port}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*SERVER_COMMANDS[self.kind](self.port, self.app), *self.flags],
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
