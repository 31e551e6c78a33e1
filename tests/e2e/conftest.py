"""
Fixtures for the end-to-end tests: a migrated site, Redis when asked, servers that
stop after each test. What they are built of lives in :mod:`harness`.
"""

from __future__ import annotations

import os
import urllib.parse

import psycopg
import pytest
import redis

from harness.clients import (  # noqa: F401  (the tests import these from here)
    Browser,
    close_code,
    frames,
    get_json,
    get_text,
    no_frame,
    read_to_close,
    stuck_client,
)
from harness.processes import cmdline, process_state, running  # noqa: F401
from harness.servers import (  # noqa: F401
    ADMIN_PASSWORD,
    ADMIN_USER,
    E2E_REDIS_URL,
    HARNESS_APP,
    HUB_APP,
    ROOT,
    SERVER_COMMANDS,
    Server,
    Site,
    free_port,
    make_site,
)
from harness.tcpproxy import TcpProxy


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

    def start(site: Site, kind: str = "daphne", app: str = HUB_APP, flags=()) -> Server:
        server = Server(site, kind, app=app, flags=tuple(flags)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# PostgreSQL whatever DATABASE_URL says: a server's database must be reachable through
# a proxy, which SQLite's file is not. Fails, never skips, when it is not answering.
POSTGRES_URL = os.environ.get("E2E_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def pg_site(tmp_path_factory, redis_available):
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL is not answering at {POSTGRES_URL} ({exc}); these tests need it.")
    instance, drop = make_site(tmp_path_factory.mktemp("pg"), database=POSTGRES_URL)
    yield instance.with_redis(E2E_REDIS_URL)
    drop()


@pytest.fixture(scope="module")
def redis_available():
    try:
        redis.Redis.from_url(E2E_REDIS_URL, socket_connect_timeout=2).flushdb()
    except redis.exceptions.RedisError as exc:
        pytest.fail(f"Redis is not answering at {E2E_REDIS_URL} ({exc}); these tests need it.")


@pytest.fixture
def proxied(pg_site):
    """The site as a server reaches it: its database through a proxy the test can cut."""
    parts = urllib.parse.urlsplit(pg_site.env["DATABASE_URL"])
    proxy = TcpProxy(parts.hostname, parts.port or 5432).start()
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    yield pg_site.with_env(DATABASE_URL=url), proxy
    proxy.close()
