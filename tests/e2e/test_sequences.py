"""
Guarantees across sequences of operations on real servers: state that one operation
leaves behind must not break the next one (a process emptied after a busy period, a
client whose frame crashed a handler, a resume larger than the slow-client bound, a
resume while broadcasts flow).
"""

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import close_code, frames, stuck_client

pytestmark = [pytest.mark.e2e]

SERVERS = ["daphne", "uvicorn"]


def flood_code(count: int, size: int) -> str:
    return f"""
from broadcast import publish
for n in range({count}):
    publish("flood", {{"n": n, "pad": "x" * {size}}}, persist=False)
"""


async def read_all(ws, count: int, timeout: float = 60) -> list[dict]:
    return [json.loads(await asyncio.wait_for(ws.recv(), timeout)) for _ in range(count)]


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("kind", SERVERS)
async def test_a_process_emptied_after_a_busy_period_welcomes_and_serves_new_clients(
    redis_site, start_server, kind
):
    site = redis_site.with_env(BROADCAST_MAX_PENDING_BYTES=str(256 * 1024))
    server = start_server(site, kind)
    readers = [await server.client() for _ in range(5)]
    stuck = await asyncio.to_thread(stuck_client, server.port)
    count = 1500
    publishing = asyncio.ensure_future(asyncio.to_thread(site.shell, flood_code(count, 8000)))
    received = await asyncio.gather(*(read_all(ws, count) for ws in readers))
    await publishing
    for frames_of_one in received:
        assert [frame["payload"]["n"] for frame in frames_of_one] == list(range(count))
    for ws in readers:
        await ws.close()
    stuck.close()
    await asyncio.sleep(1.0)

    async def newcomer():
        ws = await asyncio.wait_for(server.client(), 5)
        return ws

    late = [await newcomer() for _ in range(3)]
    await asyncio.to_thread(site.shell, flood_code(50, 100))
    for ws in late:
        assert [frame["payload"]["n"] for frame in await frames(ws, 50)] == list(range(50))
        await ws.close()
    await asyncio.wait_for(asyncio.to_thread(server.stop), 20)
    assert "took too long to shut down" not in server.log()


@pytest.mark.parametrize("kind", SERVERS)
async def test_a_frame_that_crashes_a_handler_still_frees_the_connection_slot(
    site, start_server, kind
):
    server = start_server(site.with_env(BROADCAST_MAX_CONNECTIONS="3"), kind)
    nested = "[" * 1500 + "]" * 1500
    for _ in range(6):
        ws = await server.client()
        await ws.send(nested)
        (reply,) = await frames(ws, 1)
        assert reply["type"] == "hub.error"
        await ws.close()
    await asyncio.to_thread(site.wait_for_live_total, 0)
    clients = [await server.client() for _ in range(3)]
    assert all(ws.welcome["type"] == "hub.welcome" for ws in clients)
    excess = await connect(server.ws_url, origin=server.http)
    assert await close_code(excess) == 1013
    for ws in clients:
        await ws.close()
    assert "Traceback" not in server.log()


def persist_code(count: int, size: int) -> str:
    return f"""
from broadcast import publish
for n in range({count}):
    publish("big", {{"n": n, "pad": "x" * {size}}})
"""


@pytest.mark.parametrize("kind", SERVERS)
async def test_a_resume_larger_than_the_slow_client_bound_is_streamed(
    redis_site, start_server, kind
):
    site = redis_site.with_env(BROADCAST_MAX_PENDING_BYTES=str(256 * 1024))
    server = start_server(site, kind)
    probe = await server.client()
    before = probe.welcome["payload"]["last_id"]
    await probe.close()
    await asyncio.to_thread(site.shell, persist_code(30, 50_000))  # 1.5 MB of history
    ws = await server.client(f"?last_id={before}")
    replayed = await read_all(ws, 31, timeout=10)
    assert [frame["id"] for frame in replayed[:30]] == list(range(before + 1, before + 31))
    assert replayed[30]["type"] == "hub.resumed"
    await ws.close()
    assert "Dropped a slow client" not in server.log()


RUNNING_PUBLISHER = """
import time
from broadcast import publish
for n in range({count}):
    publish("live", {{"n": n}})
    time.sleep(0.01)
"""


@pytest.mark.redis
@pytest.mark.parametrize("kind", SERVERS)
async def test_a_resume_while_broadcasts_flow_gets_history_first_then_live_in_order(
    redis_site, start_server, kind
):
    server = start_server(redis_site, kind)
    probe = await server.client()
    before = probe.welcome["payload"]["last_id"]
    await probe.close()
    await asyncio.to_thread(redis_site.shell, persist_code(300, 10))
    publishing = asyncio.ensure_future(
        asyncio.to_thread(redis_site.shell, RUNNING_PUBLISHER.format(count=300))
    )
    await asyncio.sleep(1.0)
    resumers = []
    for last_id in (before, before + 100, before + 200):
        ws = await server.client(f"?last_id={last_id}")
        resumers.append((last_id, ws))
        await asyncio.sleep(0.2)
    await publishing
    for last_id, ws in resumers:
        ids = []
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if frame["type"] == "hub.resumed":
                continue
            ids.append(frame["id"])
            if frame["type"] == "live" and frame["payload"]["n"] == 299:
                break
        assert ids == list(range(last_id + 1, ids[-1] + 1)), f"resume from {last_id}"
        await ws.close()
