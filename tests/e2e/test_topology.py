"""
The production topology of docs/operations.md, run as written: nginx (its ```nginx
block) in front of two server processes on Redis, met by hostile clients.
"""

import asyncio
import http.client
import json
import time
from typing import NamedTuple

import pytest

from harness.nginx import HOSTNAME, Nginx
from tests.e2e.conftest import ROOT, Server, Site

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEY = "e2e-nginx-publish-key-0123456789"
CLIENT_HEADER_TIMEOUT = 10  # the docs block's client_header_timeout, in seconds
PARTIAL_UPGRADE = (
    b"GET /ws/broadcast/ HTTP/1.1\r\nHost: hub.example.com\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
)  # no key and no blank line: the headers never end


# The servers' log options of docs/operations.md's systemd unit (and its daphne line):
# nginx's access log, which leaves queries out, stands in for theirs.
DOCUMENTED_FLAGS = {"uvicorn": ("--no-access-log",), "daphne": ("--access-log", "/dev/null")}


def test_the_documented_server_lines_carry_the_flags_the_topology_runs_with():
    text = (ROOT / "docs" / "operations.md").read_text()
    unit = text.split("ExecStart=/srv/hub/.venv/bin/uvicorn", 1)[1].split("\n# ", 1)[0]
    assert " ".join(DOCUMENTED_FLAGS["uvicorn"]) in unit
    daphne_line = text.split("ExecStart=/srv/hub/.venv/bin/daphne", 1)[1].split("`", 1)[0]
    assert " ".join(DOCUMENTED_FLAGS["daphne"]) in daphne_line


class Topology(NamedTuple):
    site: Site
    servers: list[Server]
    nginx: Nginx


@pytest.fixture(params=["daphne", "uvicorn"])
def topology(request, redis_site, start_server):
    site = redis_site.with_env(
        DJANGO_DEBUG="0",  # production: HTTPS redirect unless X-Forwarded-Proto says https
        DJANGO_SECRET_KEY="e2e-" + "k" * 50,
        DJANGO_ALLOWED_HOSTS=f"{HOSTNAME},127.0.0.1",
        BROADCAST_API_KEYS=KEY,
    )
    flags = DOCUMENTED_FLAGS[request.param]
    servers = [start_server(site, request.param, flags=flags) for _ in range(2)]
    nginx = Nginx([server.port for server in servers]).start()
    yield Topology(site, servers, nginx)
    nginx.stop()


def publish(nginx: Nginx, path: str = "/broadcast/publish", key: str | None = KEY) -> int:
    body = json.dumps({"type": "announcement", "payload": {"text": "hello"}}).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return nginx.request("POST", path, body, headers)[0]


async def stall(nginx: Nginx) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    """A TLS connection that sends half an upgrade request, then nothing."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", nginx.port, ssl=nginx.ssl_context(), server_hostname=HOSTNAME
    )
    writer.write(PARTIAL_UPGRADE)
    await writer.drain()
    return reader, writer, time.monotonic()


async def seconds_to_close(reader: asyncio.StreamReader, since: float, wait: float) -> float:
    try:
        await asyncio.wait_for(reader.read(), wait)
    except TimeoutError:
        return float("inf")
    except OSError:  # a reset, or TLS's EOF without close_notify: closed all the same
        pass
    return time.monotonic() - since


def test_the_site_is_served_through_nginx_and_the_probes_only_from_inside(topology):
    nginx = topology.nginx
    (nginx.dir / "static" / "probe.txt").write_text("static from nginx")
    assert nginx.request("GET", "/")[0] == 200  # X-Forwarded-Proto: no redirect loop
    assert nginx.request("GET", "/static/probe.txt") == (200, b"static from nginx")
    assert nginx.request("GET", "/healthz")[0] == 403  # 127.0.0.1 is not 10.0.0.0/8
    assert nginx.request("GET", "/metrics")[0] == 403
    with nginx.connect(alpn=["h2", "http/1.1"]) as sock:  # what a browser offers
        assert sock.selected_alpn_protocol() == "h2"
    plain = http.client.HTTPConnection("127.0.0.1", nginx.http_port, timeout=10)
    plain.request("GET", "/ws/broadcast/?last_id=3", headers={"Host": HOSTNAME})
    moved = plain.getresponse()
    assert moved.status == 301
    assert moved.getheader("Location") == f"https://{HOSTNAME}/ws/broadcast/?last_id=3"
    plain.close()


async def test_stalled_handshakes_are_dropped_while_a_real_client_connects(topology):
    nginx = topology.nginx
    stalled = [await stall(nginx) for _ in range(100)]
    try:
        waits = [
            asyncio.create_task(seconds_to_close(reader, since, CLIENT_HEADER_TIMEOUT + 5))
            for reader, _, since in stalled
        ]
        ws = await nginx.client()
        assert not any(wait.done() for wait in waits)  # all 100 still held open meanwhile
        await ws.close()
        closed_after = await asyncio.gather(*waits)
        assert max(closed_after) < CLIENT_HEADER_TIMEOUT + 3, sorted(closed_after)[-5:]
        assert min(closed_after) > CLIENT_HEADER_TIMEOUT - 1  # the timeout, not a refusal
    finally:
        for _, writer, _ in stalled:
            writer.close()


def test_an_oversized_publish_gets_413_from_nginx_before_its_body(topology):
    nginx = topology.nginx
    assert publish(nginx) == 201
    cases = (
        (200 * 2**20, KEY, b""),
        (64 * 2**20, "wrong" * 4, b"{" * 2**20),
        (200 * 2**10, KEY, b""),  # over the API's 129k, under nginx's default 1m
    )
    for length, key, body in cases:
        sock = nginx.connect(timeout=2)
        started = time.monotonic()
        sock.sendall(
            f"POST /broadcast/publish HTTP/1.1\r\nHost: {HOSTNAME}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
            + body  # a first MiB at most: the answer must not wait for the rest
        )
        answer = sock.recv(4096)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"Content-Type: text/html" in answer  # nginx's page, not the API's JSON
        assert time.monotonic() - started < 2
    # Only the small publish reached a server process: its one log line from the app.
    published = (server.log().count("HTTP publish with API key") for server in topology.servers)
    assert sum(published) == 1


async def test_tokens_and_keys_in_urls_stay_out_of_nginx_logs(topology):
    token, seen = await leave_secrets(topology)
    logs = topology.nginx.every_log()
    assert "/ws/broadcast/" in seen and "/broadcast/publish" in seen  # it does log them
    for secret in (token, KEY):
        assert secret not in logs


async def test_tokens_and_keys_in_urls_stay_out_of_server_logs(topology):
    token, _ = await leave_secrets(topology)
    logs = "".join(server.log() for server in topology.servers)
    for secret in (token, KEY):
        assert secret not in logs, f"{secret[:12]}... in a server log"


async def leave_secrets(topology: Topology) -> tuple[str, str]:
    """
    A token connect, a key in a URL and one in its header, through nginx: the token,
    and nginx's access log afterwards.
    """
    code = "from broadcast import connect_token; print(connect_token(None, topics=['news']))"
    token = (await asyncio.to_thread(topology.site.shell, code)).strip()
    # Welcomed with no Origin header: the token was read (without one, that is a 403).
    ws = await topology.nginx.client(f"?token={token}", origin=None)
    await ws.close()
    assert publish(topology.nginx, f"/broadcast/publish?key={KEY}", key=None) == 401
    assert publish(topology.nginx) == 201  # the key in Authorization, where it belongs
    await asyncio.sleep(0.5)  # a WebSocket's line is written when it ends
    return token, topology.nginx.access_log()
