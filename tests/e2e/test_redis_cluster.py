"""End to end with Redis: two daphne processes share one hub through channels-redis."""

import asyncio
import json

import pytest

from tests.e2e.conftest import frames, no_frame

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
def servers(redis_site, start_server):
    return [start_server(redis_site), start_server(redis_site)]


async def clients_on(servers, per_server=3):
    return [await server.client() for server in servers for _ in range(per_server)]


async def test_one_command_reaches_every_client_on_every_process_once(redis_site, servers):
    clients = await clients_on(servers)
    result = await asyncio.to_thread(
        redis_site.manage, "broadcast", "announcement", '{"text": "to all"}'
    )
    sent_id = int(result.stdout.split("id=")[1].split()[0])
    for ws in clients:
        (frame,) = await frames(ws, 1)
        assert (frame["id"], frame["payload"]) == (sent_id, {"text": "to all"})
        assert await no_frame(ws, 0.3)
        await ws.close()


async def test_the_python_api_and_the_signal_publish_from_another_process(redis_site, servers):
    clients = await clients_on(servers, per_server=2)
    await asyncio.to_thread(
        redis_site.shell,
        "from broadcast import publish; publish('from.api', {'via': 'api'})",
    )
    await asyncio.to_thread(
        redis_site.shell,
        "from broadcast.signals import broadcast_requested;"
        "broadcast_requested.send(sender=None, type='from.signal', payload={'via': 'signal'})",
    )
    for ws in clients:
        received = await frames(ws, 2)
        assert [frame["type"] for frame in received] == ["from.api", "from.signal"]
        assert received[0]["id"] < received[1]["id"]
        await ws.close()


async def test_hubstatus_totals_every_process(redis_site, servers):
    first = [await servers[0].client() for _ in range(2)]
    second = [await servers[1].client() for _ in range(3)]
    await asyncio.to_thread(redis_site.wait_for_live_total, 5)
    lines = (await asyncio.to_thread(redis_site.manage, "hubstatus")).stdout.splitlines()
    assert sum(" live " in line for line in lines) >= 2
    for ws in first:
        await ws.close()
    await asyncio.to_thread(redis_site.wait_for_live_total, 3)
    for ws in second:
        await ws.close()


PUBLISHERS = """
import threading
from broadcast import publish
def run(n):
    for i in range(15):
        publish('race', {{'publisher': '{name}-' + str(n), 'i': i}})
threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
"""


async def test_concurrent_publishers_in_two_processes_deliver_in_id_order(redis_site, servers):
    """Two processes of three publisher threads: every client sees ids strictly rising."""
    clients = await clients_on(servers, per_server=2)
    await asyncio.gather(
        asyncio.to_thread(redis_site.shell, PUBLISHERS.format(name="a")),
        asyncio.to_thread(redis_site.shell, PUBLISHERS.format(name="b")),
    )
    expected = json.loads(
        await asyncio.to_thread(
            redis_site.shell,
            "import json; from broadcast.models import Broadcast;"
            "print(json.dumps(list(Broadcast.objects.filter(type='race', status='sent')"
            ".order_by('seq').values_list('seq', flat=True))))",
        )
    )
    assert len(expected) == 90
    for ws in clients:
        ids = [frame["id"] for frame in await frames(ws, 90)]
        assert ids == expected
        await ws.close()


async def test_an_unreachable_redis_fails_the_command_in_one_line(site):
    broken = site.with_redis("redis://127.0.0.1:1/0")
    result = await asyncio.to_thread(broken.manage, "broadcast", "news", "{}", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CommandError: Broadcast row")
    assert "marked failed: ConnectionError" in lines[0]
    assert "Traceback" not in result.stderr
