"""REDIS_SENTINELS: the hub found through a real Redis Sentinel (docs/deployment.md)."""

import asyncio
import subprocess
import time

import pytest
import redis

from tests.e2e.conftest import frames, free_port
from tests.e2e.test_redis_outage import PrivateRedis

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
def sentinel(tmp_path):
    """A private redis-server, and a Sentinel (redis-server --sentinel) watching it."""
    master = PrivateRedis()
    master.start()
    port = free_port()
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites its config: a file of its own
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor hubmaster 127.0.0.1 {master.port} 1\n"
    )
    process = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            if client.execute_command("SENTINEL", "get-master-addr-by-name", "hubmaster"):
                break
        except redis.exceptions.ConnectionError:
            pass
        assert time.monotonic() < deadline, "Sentinel did not start"
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(10)
    master.stop()


async def test_the_hub_runs_through_sentinel(site, start_server, sentinel):
    sentinel_site = site.with_env(REDIS_SENTINELS=sentinel, REDIS_SENTINEL_MASTER="hubmaster")
    server = start_server(sentinel_site, "uvicorn")
    ws = await server.client()
    result = await asyncio.to_thread(sentinel_site.manage, "broadcast", "news", '{"via": "s"}')
    assert "Sent broadcast id=" in result.stdout
    assert [f["payload"] for f in await frames(ws, 1)] == [{"via": "s"}]
    await ws.close()
