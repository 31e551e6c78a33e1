"""
The database goes away under a running server, behind a proxy the test cuts: a gap
in the ids is held until history can be read (never skipped without a word); a client
resuming within what the process relayed is served from recent history, and one
resuming from further back is told to come back (never hub.reset).
"""

import asyncio
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import (
    E2E_REDIS_URL,
    ROOT,
    close_code,
    frames,
    get_json,
    no_frame,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

# Another database number on the same Redis: a broadcast sent there is persisted with
# its id but never reaches the servers' relays, as one lost in the layer is.
ELSEWHERE_REDIS_URL = E2E_REDIS_URL.rsplit("/", 1)[0] + "/11"


def publish(site, kind: str, redis_url: str = E2E_REDIS_URL) -> int:
    """Publish with the command; the id it printed."""
    printed = site.with_redis(redis_url).manage("broadcast", kind, "{}").stdout
    return int(printed.split("id=", 1)[1].split()[0])


async def published_before_the_relay(site, count: int) -> list[int]:
    """Broadcasts sent while the server has no client: they are in the database only."""
    return [await asyncio.to_thread(publish, site, f"n{n}") for n in range(count)]


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_gap_the_database_cannot_fill_yet_is_held_then_filled_in_order(
    pg_site, proxied, start_server, kind
):
    served, proxy = proxied
    server = start_server(served, kind)
    ws = await server.client()
    await asyncio.to_thread(publish, pg_site, "one")
    (one,) = await frames(ws, 1)
    await asyncio.to_thread(publish, pg_site, "lost", ELSEWHERE_REDIS_URL)

    proxy.cut()
    await asyncio.to_thread(publish, pg_site, "three")
    # The relay sees the gap, cannot read it, and holds: nothing skips ahead.
    assert await no_frame(ws, 1.5), "a broadcast went out ahead of the gap before it"
    status, health = await asyncio.to_thread(get_json, server.http + "/healthz")
    assert status == 503 and health["relay"]["state"] == "holding", health

    proxy.restore()
    got = await frames(ws, 2, timeout=15)
    assert [(f["id"], f["type"]) for f in got] == [
        (one["id"] + 1, "lost"),
        (one["id"] + 2, "three"),
    ]
    assert "holding the stream and retrying" in server.log()
    status, health = await asyncio.to_thread(get_json, server.http + "/healthz")
    assert status == 200 and health["relay"]["state"] == "running", health


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_resume_while_the_database_is_away_is_told_to_retry_not_reset(
    pg_site, proxied, start_server, kind
):
    served, proxy = proxied
    server = start_server(served, kind)
    ids = await published_before_the_relay(pg_site, 3)
    await server.client()  # starts the relay while the database answers

    proxy.cut()
    resuming = await server.client(f"?last_id={ids[0]}")
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frame = await asyncio.wait_for(resuming.recv(), 15)
            assert '"hub.reset"' not in frame, "history that still exists was called gone"
    assert closed.value.rcvd.code == 1013 and closed.value.rcvd.reason == "history unavailable"

    proxy.restore()
    again = await server.client(f"?last_id={ids[0]}")
    got = await frames(again, 3, timeout=15)
    assert [f["id"] for f in got[:2]] == ids[1:]
    assert got[2]["type"] == "hub.resumed"


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_resume_within_what_the_process_relayed_needs_no_database(
    pg_site, proxied, start_server, kind
):
    served, proxy = proxied
    server = start_server(served, kind)
    watcher = await server.client()
    for n in range(3):
        await asyncio.to_thread(publish, pg_site, f"n{n}")
    ids = [f["id"] for f in await frames(watcher, 3)]

    proxy.cut()
    resuming = await server.client(f"?last_id={ids[0]}")
    got = await frames(resuming, 3, timeout=15)
    assert [f["id"] for f in got[:2]] == ids[1:]
    assert got[2]["type"] == "hub.resumed", got[2]
    assert got[2]["payload"] == {"from": ids[0], "count": 2, "last_id": ids[2]}
    assert "Closed a resuming client" not in server.log()


def script_from_the_docs(url: str, origin: str) -> str:
    """The script example of docs/receiving.md, pointed at ``url``, resuming from argv[1]."""
    text = (ROOT / "docs" / "receiving.md").read_text()
    code = text.split("## From a script", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('"wss://hub.example.com/ws/broadcast/"', repr(url))
    code = code.replace('"https://hub.example.com"', repr(origin))
    assert code.endswith("asyncio.run(listen())\n")
    return code.replace("asyncio.run(listen())", "asyncio.run(listen(int(sys.argv[1])))")


async def test_the_docs_script_comes_back_after_try_again_later_and_misses_nothing(
    pg_site, proxied, start_server, tmp_path
):
    served, proxy = proxied
    server = start_server(served, "uvicorn")
    ids = await published_before_the_relay(pg_site, 3)
    await server.client()

    proxy.cut()
    script = tmp_path / "listen.py"
    script.write_text("import sys\n" + script_from_the_docs(server.ws_url, server.http))
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-u", str(script), str(ids[0]), stdout=asyncio.subprocess.PIPE
    )
    try:
        await asyncio.sleep(1.5)  # it is closed with 1013, and backs off
        assert "Closed a resuming client with 1013" in server.log()
        proxy.restore()
        lines = [
            (await asyncio.wait_for(listener.stdout.readline(), 30)).decode().split()[:2]
            for _ in range(2)
        ]
        assert lines == [[str(ids[1]), "n1"], [str(ids[2]), "n2"]]
    finally:
        listener.kill()
        await listener.wait()


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_first_client_while_the_database_is_away_is_told_to_retry_then_served(
    proxied, start_server, kind
):
    served, proxy = proxied
    server = start_server(served, kind)  # no client yet: its relay has no position
    proxy.cut()
    refused = await connect(server.ws_url, origin=server.http)
    assert await close_code(refused) == 1013
    proxy.restore()
    ws = await server.client()  # the welcome, with the position read now
    assert ws.welcome["payload"]["last_id"] >= 0
    log = server.log()
    assert "Refused a client (1013): the database cannot be read" in log
    assert "Traceback" not in log
