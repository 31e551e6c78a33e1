"""
Churn soak, bounded (about 30 s of churn): thousands of clients connect and leave while
broadcasts flow. Nothing may leak and the clients that stayed must get everything.
"""

import asyncio
import time
from pathlib import Path

import pytest
import redis
from websockets.asyncio.client import connect

from tests.e2e.conftest import E2E_REDIS_URL, frames

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

STEADY = 20
MESSAGES = 600  # 30 s at 20 a second
CHURN_SECONDS = 30
CHURN_BATCH = 50  # daphne's listen backlog (Twisted's default) is 50

PUBLISHER = f"""
import asyncio
from broadcast import apublish
async def main():
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range({MESSAGES}):
        await asyncio.sleep(max(0, start + n / 20 - loop.time()))
        await apublish("soak", {{"n": n}}, persist=False)
asyncio.run(main())
"""


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])


async def churn(server, deadline: float) -> int:
    """Connect and drop batches of clients until the deadline; how many came and went."""
    total = 0
    while time.monotonic() < deadline:
        batch = await asyncio.gather(
            *(connect(server.ws_url, origin=server.http) for _ in range(CHURN_BATCH))
        )
        await asyncio.sleep(0.05)
        for ws in batch[1::2]:
            ws.transport.abort()  # a client that just vanishes
        await asyncio.gather(*(ws.close() for ws in batch[::2]))  # clean closes
        total += len(batch)
    return total


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_churn_leaks_nothing_and_steady_clients_get_everything(
    redis_site, start_server, kind
):
    server = start_server(redis_site, kind)
    steady = [await server.client() for _ in range(STEADY)]
    await asyncio.to_thread(redis_site.wait_for_live_total, STEADY)
    baseline = rss_kib(server.process.pid)

    publishing = asyncio.ensure_future(asyncio.to_thread(redis_site.shell, PUBLISHER))
    churned = asyncio.ensure_future(churn(server, time.monotonic() + CHURN_SECONDS))
    received = await asyncio.gather(*(frames(ws, MESSAGES, timeout=60) for ws in steady))
    assert await churned >= 2000
    await publishing
    for frames_of_one in received:
        assert [frame["payload"]["n"] for frame in frames_of_one] == list(range(MESSAGES))

    await asyncio.to_thread(redis_site.wait_for_live_total, STEADY, 20)
    # CPython keeps its allocator's high-water mark, and daphne itself grows about as
    # much with a raw ASGI app (docs/benchmarks.md); leaking each churned connection
    # (about 24 KiB) would pass this bound.
    grown = rss_kib(server.process.pid) - baseline
    print(f"{kind}: RSS grew {grown} KiB after {await churned} churned clients")
    assert grown < 64 * 1024, f"RSS grew {grown} KiB over the steady clients' baseline"
    for ws in steady:
        await ws.close()
    await asyncio.to_thread(redis_site.wait_for_live_total, 0, 20)
    # One member in Redis for the process however many clients came and went: its
    # relay, which stays while the process serves and leaves when it stops.
    group = redis.Redis.from_url(E2E_REDIS_URL)
    assert group.zcard("asgi:group:broadcast") == 1
    await asyncio.to_thread(server.stop)
    assert group.zcard("asgi:group:broadcast") == 0
