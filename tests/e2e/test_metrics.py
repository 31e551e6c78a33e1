"""/metrics over several real server processes sharing PROMETHEUS_MULTIPROC_DIR."""

import asyncio
import re

import pytest

from tests.e2e.conftest import frames, get_json, get_text

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def value(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in:\n{text}"
    return float(match.group(1))


async def scrape(server) -> str:
    return await asyncio.to_thread(get_text, server.http + "/metrics")


async def test_metrics_add_up_over_processes_and_forget_a_killed_one(
    redis_site, start_server, tmp_path
):
    site = redis_site.with_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    first, second = start_server(site, "uvicorn"), start_server(site, "daphne")
    clients = [await first.client() for _ in range(3)] + [await second.client() for _ in range(2)]
    for server in (first, second):
        assert value(await scrape(server), "broadcast_connections") == 5

    for n in range(2):  # from manage.py: a third process, counted in the same directory
        await asyncio.to_thread(site.manage, "broadcast", "news", f'{{"n": {n}}}')
    for ws in clients:
        assert [f["payload"] for f in await frames(ws, 2)] == [{"n": 0}, {"n": 1}]
    text = await scrape(second)
    assert value(text, "broadcast_published_total") == 2
    assert value(text, "broadcast_deliveries_total") == 10
    assert value(text, "broadcast_fan_out_seconds_count") == 4  # once per process
    assert value(text, "broadcast_connections_accepted_total") == 5

    second.process.kill()
    second.process.wait()
    assert value(await scrape(first), "broadcast_connections") == 3
    status, health = await asyncio.to_thread(get_json, first.http + "/healthz")
    assert status == 200 and health["channel_layer"]["backend"] == "RedisChannelLayer", health
    for ws in clients[:3]:
        await ws.close()
