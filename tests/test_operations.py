"""/metrics and /healthz, through Django's test client and the hub's real code paths."""

import re

import pytest

from broadcast import apublish, publish
from tests.clients import connect, frame

pytestmark = pytest.mark.django_db(transaction=True)


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in the metrics page"
    return float(match.group(1))


async def scrape(async_client) -> str:
    response = await async_client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


async def test_metrics_count_connections_publishes_deliveries_and_fan_outs(async_client, hub):
    before = await scrape(async_client)
    clients = [await connect() for _ in range(3)]
    during = await scrape(async_client)
    assert sample(during, "broadcast_connections") == sample(before, "broadcast_connections") + 3
    await apublish("news", {"n": 1})
    await apublish("news", {"n": 2}, persist=False)
    for client in clients:
        await frame(client)
        await frame(client)
    after = await scrape(async_client)
    for name, grew_by in [
        ("broadcast_published_total", 2),
        ("broadcast_deliveries_total", 6),
        ("broadcast_fan_out_seconds_count", 2),
        ("broadcast_connections_accepted_total", 3),
    ]:
        assert sample(after, name) - sample(before, name) == grew_by, name
    for client in clients:
        await client.disconnect()
    assert sample(await scrape(async_client), "broadcast_connections") == sample(
        before, "broadcast_connections"
    )


def test_a_failed_publish_is_counted(client, unreachable_layer):
    from broadcast.publishing.api import PublishFailed

    before = sample(client.get("/metrics").content.decode(), "broadcast_publish_failures_total")
    with pytest.raises(PublishFailed):
        publish("news", {"n": 1})
    after = sample(client.get("/metrics").content.decode(), "broadcast_publish_failures_total")
    assert after == before + 1


def test_metrics_can_be_switched_off_or_need_a_token(client, settings):
    settings.BROADCAST_METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    settings.BROADCAST_METRICS_ENABLED = False
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 404


async def test_healthz_reports_the_database_and_the_layer(async_client):
    response = await async_client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["channel_layer"]["ok"]
    assert body["channel_layer"]["backend"] == "InMemoryChannelLayer"
    assert body["live_connections"] == 0


async def test_healthz_is_503_when_the_channel_layer_is_down(async_client, unreachable_layer):
    response = await async_client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"]["ok"] is True
    assert body["channel_layer"]["ok"] is False and "Connection" in body["channel_layer"]["error"]
    # Kinds of failure only: the exception's text (hosts, ports, users) stays in the log.
    assert "127.0.0.1" not in response.content.decode()


async def test_healthz_reports_this_processs_relay_and_fails_while_it_restarts(async_client, hub):
    from tests.clients import connect

    body = (await async_client.get("/healthz")).json()
    assert body["relay"] == {"ok": True, "state": "idle", "restarts": 0}
    client = await connect()
    assert (await async_client.get("/healthz")).json()["relay"]["state"] == "running"
    hub.relay.running = False  # as between a failure and the restart
    response = await async_client.get("/healthz")
    assert response.status_code == 503 and response.json()["relay"]["state"] == "restarting"
    hub.relay.running = True
    await client.disconnect()


async def test_healthz_round_trips_through_redis(async_client, redis_layer):
    response = await async_client.get("/healthz")
    assert response.status_code == 200, response.content
    assert response.json()["channel_layer"]["backend"] == "RedisChannelLayer"


def test_healthz_can_be_switched_off(client, settings):
    settings.BROADCAST_HEALTHZ_ENABLED = False
    assert client.get("/healthz").status_code == 404


async def test_healthz_round_trips_through_redis_while_the_relay_receives(
    async_client, redis_layer, hub
):
    client = await connect()  # the relay now holds channels-redis's receive lock
    response = await async_client.get("/healthz")
    assert response.status_code == 200, response.content
    await apublish("news", {"n": 1})
    assert (await frame(client))["payload"] == {"n": 1}  # the relay still gets its own
    await client.disconnect()
