"""
Hostile and unlucky input against real servers, daphne and uvicorn: access taken back
from open connections in two processes, topic names from the connect URL judged like
frames, and publishing that answers JSON, in time, when its input cannot be encoded
or its database is away or locked. The handshake, body and log tests run behind the
documented nginx (test_topology.py).
"""

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import close_code, frames, get_json

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEY = "e2e-publish-key-" + "x" * 16


def api(server, body: str, key: str = KEY) -> tuple[int, Any, dict]:
    """POST the publish API: (status, headers, JSON body), whatever the status."""
    request = urllib.request.Request(
        server.http + "/broadcast/publish", data=body.encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def shell(site, code: str) -> str:
    return site.shell("from django.contrib.auth.models import User;" + code)


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_users_connections_in_two_processes_close_on_deletion_and_old_tokens_fail(
    redis_site, start_server, kind
):
    first, second = start_server(redis_site, kind), start_server(redis_site, kind)
    made = f"print(User.objects.create_user('eve-{kind}', password='a').pk)"
    pk = int(shell(redis_site, made))
    token = shell(
        redis_site,
        f"from broadcast import connect_token; print(connect_token(User.objects.get(pk={pk})))",
    ).strip()
    theirs = [await first.client(f"?token={token}"), await second.client(f"?token={token}")]
    other = await second.client()

    shell(redis_site, f"user = User.objects.get(pk={pk}); user.set_password('b'); user.save()")
    for ws in theirs:
        assert await close_code(ws) == 4003
    with pytest.raises(InvalidStatus) as refused:
        await connect(first.ws_url + f"?token={token}")
    assert refused.value.response.status_code == 403

    fresh = shell(
        redis_site,
        f"from broadcast import connect_token; print(connect_token(User.objects.get(pk={pk})))",
    ).strip()
    again = await second.client(f"?token={fresh}")
    shell(redis_site, f"User.objects.get(pk={pk}).delete()")
    assert await close_code(again) == 4003
    after = redis_site.manage("broadcast", "after", "{}").stdout
    (got,) = await frames(other, 1)
    assert f"id={got['id']}" in after
    await other.close()
    for server in (first, second):
        assert "Traceback" not in server.log()


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_url_topics_are_judged_as_frames_are(redis_site, start_server, kind):
    server = start_server(redis_site, kind)
    names = ["x" * 300, "café", "a b", 'a"b', " user.1", "\u0443ser.1", "hub.stats", "ok", "ok"]
    ws = await server.client("?topics=" + ",".join(quote(name) for name in names))
    answer, *errors = await frames(ws, 1 + 7)
    assert answer["payload"] == {"topics": ["ok"], "denied": []}
    assert [error["type"] for error in errors] == ["hub.error"] * 7
    await ws.close()


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_a_payload_with_no_utf8_form_is_a_json_400(site, start_server, kind):
    server = start_server(site.with_env(BROADCAST_API_KEYS=KEY), kind)
    status, headers, body = api(server, '{"type": "note", "payload": "\\ud800"}')
    assert status == 400 and headers["Content-Type"] == "application/json", body
    assert "valid Unicode" in body["error"]


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_with_the_database_away_the_api_answers_503_json_and_the_command_one_line(
    proxied, start_server, kind
):
    served, proxy = proxied
    server = start_server(served.with_env(BROADCAST_API_KEYS=KEY), kind)
    assert api(server, '{"type": "before"}')[0] == 201
    proxy.cut()
    try:
        status, headers, body = api(server, '{"type": "during"}')
        result = served.manage("broadcast", "during", "{}", check=False)
    finally:
        proxy.restore()
    assert status == 503, body
    assert headers["Retry-After"] == "5"
    assert "database" in body["error"]
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "CommandError: The database cannot" in result.stderr
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_locked_broadcasts_table_fails_publishes_in_time_and_healthz_says_so(
    pg_site, start_server, kind
):
    server = start_server(pg_site.with_env(BROADCAST_API_KEYS=KEY), kind)
    assert api(server, '{"type": "before"}')[0] == 201
    with psycopg.connect(pg_site.env["DATABASE_URL"]) as lock:
        lock.execute("LOCK TABLE broadcast_broadcast IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        status, headers, body = await asyncio.to_thread(api, server, '{"type": "during"}')
        took = time.monotonic() - started
        health_status, health = await asyncio.to_thread(get_json, server.http + "/healthz")
    assert status == 503 and headers["Retry-After"] == "5", body
    assert "statement timeout" in body["error"]
    assert 4 < took < 12, took  # the 5 s deadline, not the lock's 15 s or more
    assert health_status == 503
    assert health["database"] == {"ok": False, "error": "timed out"}, health
    assert api(server, '{"type": "after"}')[0] == 201


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_token_or_key_in_a_url_stays_out_of_the_servers_own_logs(site, start_server, kind):
    # Run as the harness runs them, access logs on: uvicorn's lines are filtered by
    # the app; daphne leaves WebSocket queries out, and its HTTP access lines are
    # switched off in the documented topology (test_topology.py).
    server = start_server(site.with_env(BROADCAST_API_KEYS=KEY), kind)
    token = site.shell("from broadcast import connect_token; print(connect_token(None))").strip()
    ws = await server.client(f"?token={token}")
    await ws.close()
    if kind == "uvicorn":
        request = urllib.request.Request(server.http + f"/broadcast/publish?key={KEY}", b"{}")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=10)
    await asyncio.sleep(0.5)
    log = server.log()
    assert "/ws/broadcast/" in log  # the connect is logged, its token is not
    assert token not in log and KEY not in log


@pytest.mark.parametrize(
    ("key", "length", "status"), [("wrong", 64 * 2**20, 401), (KEY, 200 * 10**6, 413)]
)
def test_uvicorn_answers_a_wrong_key_or_an_oversize_length_before_the_body(
    site, start_server, key, length, status
):
    # PublishGuard, in front of Django's handler, which reads the body first. (daphne's
    # Twisted reads every body before any application runs: its proxy bounds it.)
    server = start_server(site.with_env(BROADCAST_API_KEYS=KEY), "uvicorn")
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        sock.sendall(
            f"POST /broadcast/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )  # and no body at all
        answer = b""
        while chunk := sock.recv(65536):  # the guard closes once it has answered
            answer += chunk
        answer = answer.decode()
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}"), head
    assert "content-type: application/json" in head.lower()
    assert json.loads(body)["error"]
