"""Server processes stopping, crashing and restarting, with real clients."""

import asyncio
import json
import os
import signal
import socket
import struct
import time

import pytest
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import close_code, frames, get_text, read_to_close, stuck_client

pytestmark = [pytest.mark.e2e]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_sigterm_closes_every_client_with_1012_in_paced_batches_and_marks_it_stopped(
    site, start_server, kind
):
    server = start_server(site.with_env(BROADCAST_SHUTDOWN_TIMEOUT="2"), kind)
    count = 300  # three batches of 100, 1/3 s apart (half the timeout over three)
    clients = await asyncio.gather(*(server.client() for _ in range(count)))
    await asyncio.to_thread(site.wait_for_live_total, count)
    loop = asyncio.get_running_loop()
    sent = loop.time()
    server.process.send_signal(signal.SIGTERM)

    async def closed_after(ws) -> tuple[int | None, float]:
        code = await close_code(ws)
        return code, loop.time() - sent

    results = await asyncio.gather(*(closed_after(ws) for ws in clients))
    assert [code for code, _ in results] == [1012] * count
    times = sorted(after for _, after in results)
    # Paced: the last batch goes out at least two intervals after the first, and all
    # of it within the timeout.
    assert times[-1] - times[0] > 0.5, f"closes were not paced: {times[0]:.2f}-{times[-1]:.2f}"
    assert times[-1] < 2.0 + 1.0
    await asyncio.to_thread(server.process.wait, 15)
    lines = (await asyncio.to_thread(site.manage, "hubstatus")).stdout.splitlines()
    row = next(line for line in lines if f":{server.process.pid} " in line)
    assert " stopped " in row
    assert "Exception in ASGI application" not in server.log()
    assert "Graceful shutdown failed" not in server.log()


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_process_that_refused_a_websocket_on_redis_still_stops_on_sigterm(
    redis_site, start_server, kind
):
    server = start_server(redis_site, kind)
    for _ in range(3):
        with pytest.raises(InvalidStatus) as refused:
            await server.client(origin="http://evil.example")
        assert refused.value.response.status_code == 403
    ws = await server.client()
    server.process.send_signal(signal.SIGTERM)
    assert await close_code(ws) == 1012
    # uvicorn waits for every task of every connection before it exits, refused ones too.
    await asyncio.to_thread(server.process.wait, 10)


BACKLOG = 1000
BACKLOG_PAYLOAD = "x" * 8000  # 8 MB in all: more than the kernel buffers for one socket
PUBLISH_BACKLOG = f"""
import asyncio
from broadcast import apublish
async def main():
    for n in range({BACKLOG}):
        await apublish("backlog", {{"n": n, "pad": "{BACKLOG_PAYLOAD}"}}, persist=False)
asyncio.run(main())
"""


def wait_for_deliveries(server, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while f"\nbroadcast_deliveries_total {float(count)}\n" not in get_text(
        server.http + "/metrics"
    ):
        assert time.monotonic() < deadline, f"the server never delivered {count}"
        time.sleep(0.05)


async def a_client_behind(redis_site, start_server, kind):
    """A server (8 s to shut down) and a raw client that has read none of 8 MB sent it."""
    site = redis_site.with_env(
        BROADCAST_SHUTDOWN_TIMEOUT="8", BROADCAST_MAX_PENDING_BYTES=str(32 * 1024 * 1024)
    )
    server = start_server(site, kind)
    behind = await asyncio.to_thread(stuck_client, server.port)
    await asyncio.to_thread(site.wait_for_live_total, 1)
    await asyncio.to_thread(site.shell, PUBLISH_BACKLOG)
    await asyncio.to_thread(wait_for_deliveries, server, BACKLOG)
    return server, behind


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_client_behind_on_its_backlog_at_a_restart_reads_all_of_it_then_1012(
    redis_site, start_server, kind
):
    # A restart can find a client catching up (a slow link, a busy tab): it is owed
    # what the server has taken for it, then the 1012, even when it answers nothing
    # for longer than the servers' own close timeouts (autobahn's is 1 s).
    server, behind = await a_client_behind(redis_site, start_server, kind)
    server.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(1.5)
    texts, code = await asyncio.to_thread(read_to_close, behind)
    owed = [json.loads(text) for text in texts]
    numbers = [frame["payload"]["n"] for frame in owed if frame["type"] == "backlog"]
    assert numbers == list(range(BACKLOG)), f"{len(numbers)} of {BACKLOG} arrived"
    assert code == 1012
    behind.close()
    await asyncio.to_thread(server.process.wait, 15)


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_client_that_drops_while_a_restart_waits_for_its_backlog_does_not_hold_it(
    redis_site, start_server, kind
):
    server, behind = await a_client_behind(redis_site, start_server, kind)
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    behind.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    behind.close()  # a reset, its backlog unread
    await asyncio.to_thread(server.process.wait, 15)
    # Well within the 8 s it would give a client still reading.
    assert time.monotonic() - sent < 4, f"the restart took {time.monotonic() - sent:.1f} s"


async def test_a_killed_process_drops_out_of_the_live_total_and_a_restart_gets_a_new_row(
    site, start_server
):
    first = start_server(site)
    clients = [await first.client() for _ in range(3)]
    await asyncio.to_thread(site.wait_for_live_total, 3)
    os.kill(first.process.pid, signal.SIGKILL)
    # heartbeat 0.3 s in these tests: 3 missed heartbeats is under a second
    await asyncio.to_thread(site.wait_for_live_total, 0, 3.0)
    second = start_server(site)
    ws = await second.client()
    await asyncio.to_thread(site.wait_for_live_total, 1)
    lines = (await asyncio.to_thread(site.manage, "hubstatus")).stdout.splitlines()
    assert any(f":{first.process.pid} " in line and " stale " in line for line in lines)
    assert any(f":{second.process.pid} " in line and " live " in line for line in lines)
    await ws.close()
    for dead in clients:
        dead.transport.abort()


@pytest.mark.redis
async def test_a_client_cut_mid_stream_resumes_with_the_complete_ordered_sequence(
    redis_site, start_server
):
    server = start_server(redis_site)
    total = 150
    ws = await server.client()  # before the first broadcast, so it is owed all of them
    publisher = asyncio.ensure_future(
        asyncio.to_thread(
            redis_site.shell,
            "import time\nfrom broadcast import publish\n"
            f"for n in range({total}):\n    publish('seq', {{'n': n}})\n    time.sleep(0.01)\n",
        )
    )
    seen = [frame["id"] for frame in await frames(ws, 40)]
    ws.transport.abort()  # the socket just dies: no close handshake
    await asyncio.sleep(0.2)  # broadcasts go out while it is away
    ws = await server.client(f"?last_id={seen[-1]}")
    while len(seen) < total:
        (frame,) = await frames(ws, 1)
        if frame["type"] == "hub.resumed":
            continue
        seen.append(frame["id"])
    await publisher
    assert seen == sorted(set(seen))  # ordered, no duplicates
    expected = await asyncio.to_thread(
        redis_site.shell,
        "from broadcast.models import Broadcast\n"
        "print(list(Broadcast.objects.filter(type='seq').order_by('seq')"
        ".values_list('seq', flat=True)))",
    )
    assert str(seen) == expected.strip()
    await ws.close()
