"""Publisher backpressure on channels-redis, against a real Redis and real relays."""

import logging
import threading
import time

import pytest
import redis
from channels.layers import channel_layers, get_channel_layer

from broadcast import apublish, publish
from broadcast.publishing.backpressure import relay_backlogs
from broadcast.stream.hub import running_hub
from tests.clients import connect, frame
from tests.conftest import redis_layers
from tests.test_publish import Observer

pytestmark = pytest.mark.django_db(transaction=True)


def backlog(layer, channel) -> int:
    client = redis.Redis.from_url(layer.hosts[0]["address"])
    return client.zcard(layer.prefix + layer.non_local_name(channel))


@pytest.fixture
def relay(redis_layer, settings):
    settings.BROADCAST_MAX_RELAY_BACKLOG = 3
    instance = Observer()
    yield instance
    instance.close()


def test_a_burst_is_paced_to_a_slow_relay_and_nothing_is_lost(relay):
    received, peak = [], 0

    def read_slowly():
        nonlocal peak
        while len(received) < 20:
            peak = max(peak, backlog(relay.layer, relay.channel))
            received.extend(relay.take(1))
            time.sleep(0.02)  # a relay fanning out to many clients

    reader = threading.Thread(target=read_slowly)
    reader.start()
    started = time.monotonic()
    ids = [publish("burst", {"n": n})["id"] for n in range(20)]
    took = time.monotonic() - started
    reader.join(10)
    assert [m["id"] for m in received] == ids  # all of it, in order
    assert peak <= 3  # never more than BROADCAST_MAX_RELAY_BACKLOG queued
    assert took > 16 * 0.02  # the publisher waited for the relay instead of queueing


def test_by_default_publishers_run_a_few_broadcasts_ahead_for_the_relay_to_take_at_once(
    redis_layer,
):
    relay = Observer()  # the default BROADCAST_MAX_RELAY_BACKLOG, and a relay that is busy
    try:
        started = time.monotonic()
        ids = [publish("burst", {"n": n})["id"] for n in range(4)]
        assert time.monotonic() - started < 1.0  # nobody waited for the first four
        assert backlog(relay.layer, relay.channel) == 4  # one batch for the relay to take

        fifth = threading.Thread(target=lambda: ids.append(publish("fifth", {})["id"]))
        fifth.start()
        fifth.join(0.3)
        assert fifth.is_alive()  # the fifth waits for the relay
        received = relay.take(5)
        fifth.join(5)
        assert [m["id"] for m in received] == ids
    finally:
        relay.close()


def test_a_stalled_relay_is_waited_for_only_so_long_then_reported(relay, monkeypatch, caplog):
    monkeypatch.setattr("broadcast.publishing.backpressure.RELAY_STALL_SECONDS", 0.5)
    for n in range(3):
        publish("fill", {"n": n})  # the relay reads nothing: it is stuck
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="broadcast.publishing.backpressure"):
        publish("late", {})
        publish("later", {})
    waited = time.monotonic() - started
    assert 0.3 < waited < 3.0
    assert len([r for r in caplog.records if "stalled or gone" in r.getMessage()]) == 1
    assert [m["id"] for m in relay.take(5)] == list(range(1, 6))  # it still gets them


def test_a_relay_whose_membership_went_stale_is_not_waited_for(relay, settings):
    layer = get_channel_layer()
    client = redis.Redis.from_url(layer.hosts[0]["address"])
    client.zadd(layer._group_key("broadcast"), {relay.channel: time.time() - 3600})
    assert relay_backlogs(client, layer, time.time()) == {}
    started = time.monotonic()
    for n in range(6):
        publish("news", {"n": n})
    assert time.monotonic() - started < 1.0


def test_backpressure_can_be_switched_off(relay, settings):
    settings.BROADCAST_MAX_RELAY_BACKLOG = None
    started = time.monotonic()
    for n in range(10):
        publish("news", {"n": n})
    assert time.monotonic() - started < 1.0
    assert backlog(relay.layer, relay.channel) == 10


@pytest.fixture
def capacity_five(redis_layer, settings, monkeypatch):
    """A relay paced at one queued broadcast, waited for 0.2 s, on a layer of capacity 5."""
    layers = redis_layers(redis_layer)
    layers["default"]["CONFIG"]["capacity"] = 5
    settings.CHANNEL_LAYERS = layers
    channel_layers.backends.clear()
    settings.BROADCAST_MAX_RELAY_BACKLOG = 1
    monkeypatch.setattr("broadcast.publishing.backpressure.RELAY_STALL_SECONDS", 0.2)


def publish_twelve_with_the_loop_stuck() -> list[dict]:
    """
    Publish twelve from another thread while this, the event loop's thread, waits: the
    relay reads nothing, publishers stop waiting for it after the stall seconds, and
    channels-redis keeps the first five and drops the rest.
    """
    sent = []
    publisher = threading.Thread(
        target=lambda: sent.extend(publish("burst", {"n": n}) for n in range(12))
    )
    publisher.start()
    publisher.join(30)
    assert len(sent) == 12
    # Read with the loop still blocked (an await would let the relay drain the queue).
    assert backlog(get_channel_layer(), running_hub().relay.channel) == 5
    return sent


async def test_a_relay_stuck_past_capacity_loses_nothing_persisted(capacity_five, caplog):
    client = await connect()
    sent = publish_twelve_with_the_loop_stuck()
    received = [await frame(client) for _ in range(5)]  # what the layer kept
    # Only now: published while the relay's queue is still full, it would be dropped too.
    sent.append(await apublish("after", {}))  # the next one shows the relay the gap
    received += [await frame(client) for _ in sent[5:]]
    assert received == sent
    assert await client.receive_nothing(timeout=0.2)
    # Which, when it stalled: revealed by the next id, not by the heartbeat's look.
    assert "in the channel layer; sent them from the database" in caplog.text
    await client.disconnect()


async def test_a_relay_stuck_past_capacity_with_nothing_after_gets_the_rest_on_a_heartbeat(
    capacity_five, settings, caplog
):
    # The last broadcasts are lost too: no later id reveals the gap, so the heartbeat's
    # look for what an idle relay never got has to send them.
    from broadcast.stream.lost import LOST_AFTER_SECONDS

    settings.BROADCAST_HEARTBEAT_SECONDS = 0.2
    client = await connect()
    sent = publish_twelve_with_the_loop_stuck()
    received = [await frame(client) for _ in range(5)]
    # Within a few heartbeats of the relay idling, not on some later reconnect.
    received += [await frame(client, timeout=LOST_AFTER_SECONDS + 3) for _ in sent[5:]]
    assert received == sent
    assert await client.receive_nothing(timeout=0.3)
    assert "with none after them; sent them from the database" in caplog.text
    await client.disconnect()
