"""Redis goes away mid-run and comes back: a private redis-server the test can stop."""

import asyncio
import re
import subprocess
import sys
import time

import pytest

from harness.redis import PrivateRedis
from tests.e2e.conftest import ROOT, frames, get_json, no_frame

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


async def test_an_outage_fails_publishes_loudly_and_delivery_resumes_after_it(
    site, start_server, private_redis
):
    redis_site = site.with_redis(private_redis.url)
    server = start_server(redis_site)
    ws = await server.client()
    await asyncio.to_thread(redis_site.manage, "broadcast", "before", "{}")
    assert [f["type"] for f in await frames(ws, 1)] == ["before"]
    status, health = await asyncio.to_thread(get_json, server.http + "/healthz")
    assert status == 200 and health["channel_layer"]["ok"], health

    await asyncio.to_thread(private_redis.stop)
    status, health = await asyncio.to_thread(get_json, server.http + "/healthz")
    assert status == 503, health
    assert health["channel_layer"]["ok"] is False and health["database"]["ok"] is True
    during = await asyncio.to_thread(redis_site.manage, "broadcast", "during", "{}", check=False)
    assert during.returncode == 1
    assert "marked failed" in during.stderr and "Traceback" not in during.stderr
    await asyncio.sleep(1)  # the relay notices and keeps retrying; the process stays up
    assert server.process.poll() is None
    assert await no_frame(ws, 0.2)

    await asyncio.to_thread(private_redis.start)  # back, and empty: the group is gone
    await asyncio.to_thread(redis_site.manage, "broadcast", "after", "{}")
    assert [f["type"] for f in await frames(ws, 1, timeout=15)] == ["after"]
    # The relay may meet one stale pooled connection after rejoining; it retries that
    # at once (no backoff), so health is back well within a second or two.
    deadline = time.monotonic() + 3
    status, health = await asyncio.to_thread(get_json, server.http + "/healthz")
    while status != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        status, health = await asyncio.to_thread(get_json, server.http + "/healthz")
    assert status == 200, health

    # The failed row is named in the error; other tests may have left failed rows too.
    row = re.search(r"Broadcast row (\d+) could not be sent", during.stderr).group(1)
    resent = await asyncio.to_thread(redis_site.manage, "broadcast", "--resend", row)
    assert f"row {row} sent as id=" in resent.stdout
    assert [f["type"] for f in await frames(ws, 1)] == ["during"]
    assert "Relay cannot reach the channel layer" in server.log()
    assert "Relay is back" in server.log()
    await ws.close()


async def test_a_broadcast_published_as_redis_comes_back_reaches_pubsub_clients_alone(
    site, start_server, private_redis
):
    # channels-redis's pub/sub reader subscribes again up to a second after Redis is
    # back; what is published before that never reaches the process, and with nothing
    # after it, no gap shows. The relay's heartbeat sends it from the database.
    redis_site = site.with_redis(private_redis.url).with_env(REDIS_LAYER="pubsub")
    server = start_server(redis_site)
    ws = await server.client()
    code = "import sys\nfrom broadcast import publish\nfor line in sys.stdin:\n" \
           "    print(publish(line.strip(), {})['id'], flush=True)\n"  # fmt: skip
    publisher = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", code], cwd=ROOT, env=redis_site.env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        publisher.stdin.write("before\n")
        publisher.stdin.flush()
        before = int(await asyncio.to_thread(publisher.stdout.readline))
        assert [(f["type"], f["id"]) for f in await frames(ws, 1)] == [("before", before)]
        await asyncio.to_thread(private_redis.stop)
        await asyncio.sleep(1.5)  # the reader has lost its connection
        await asyncio.to_thread(private_redis.start)
        publisher.stdin.write("back\n")  # at once, as a busy site would
        publisher.stdin.flush()
        sent = int(await asyncio.to_thread(publisher.stdout.readline))
        got = await frames(ws, 1, timeout=10)
        assert [(f["type"], f["id"]) for f in got] == [("back", sent)]
    finally:
        publisher.kill()
        publisher.wait()
    await ws.close()
