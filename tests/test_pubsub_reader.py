"""
channels-redis's pub/sub reader, as the pub/sub seam runs it: an idle process looks
at Redis once a second instead of ten times, and a message still wakes it at once.
"""

import asyncio
import time

import pytest
from channels.layers import get_channel_layer

from broadcast import apublish
from broadcast.seams.layers import pubsub
from tests.clients import connect, frame

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


async def reads_while_idle(seconds):
    """How many reads the running loop's pub/sub reader starts in ``seconds`` of quiet."""
    pubsub_client = get_channel_layer()._get_layer()._shards[0]._pubsub
    read, reads = pubsub_client.get_message, 0

    async def counted(*args, **kwargs):
        nonlocal reads
        reads += 1
        return await read(*args, **kwargs)

    pubsub_client.get_message = counted
    try:
        await asyncio.sleep(seconds)
    finally:
        pubsub_client.get_message = read
    return reads


async def test_an_idle_process_reads_redis_once_a_second_and_a_broadcast_wakes_it_at_once(
    pubsub_layer, hub
):
    client = await connect()  # the relay subscribes: the reader starts
    assert await reads_while_idle(3.0) <= 5  # 0.1 s reads: about 30
    published = time.monotonic()
    await apublish("m", {"n": 1}, persist=False)
    assert (await frame(client))["payload"] == {"n": 1}
    # Not after the read in progress times out (READ_SECONDS): a message ends it.
    assert time.monotonic() - published < pubsub.READ_SECONDS * 0.8
    await client.disconnect()


async def test_a_health_check_before_any_client_starts_the_quiet_reader_too(pubsub_layer):
    from broadcast.views import _check_layer

    assert (await _check_layer())["ok"]  # /healthz's round trip through the layer
    assert await reads_while_idle(3.0) <= 5


async def test_a_reader_whose_internals_moved_is_channels_redis_own_and_delivers(
    pubsub_layer, hub, monkeypatch, caplog
):
    monkeypatch.setattr(pubsub, "probes", {})
    monkeypatch.setattr(pubsub, "READER_SHARD_NAMES", ("_pubsub", "gone_in_a_release"))
    client = await connect()
    assert await reads_while_idle(1.0) >= 5, "the layer's own 0.1 s reads"
    assert "RedisSingleShardConnection.gone_in_a_release" in caplog.text
    assert "quiet reader fast path off" in caplog.text
    await apublish("m", {"n": 2}, persist=False)
    assert (await frame(client))["payload"] == {"n": 2}
    await client.disconnect()


async def test_a_failed_read_is_logged_as_channels_redis_logs_it_and_the_reader_goes_on(
    pubsub_layer, hub, caplog
):
    import redis.exceptions

    from faults.oracle import KNOWN_LOG_BLOCKS, LOG_FAULTS

    client = await connect()
    pubsub_client = get_channel_layer()._get_layer()._shards[0]._pubsub
    read, failed = pubsub_client.get_message, asyncio.Event()

    async def refused_once(*args, **kwargs):
        if not failed.is_set():
            failed.set()
            raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        return await read(*args, **kwargs)

    pubsub_client.get_message = refused_once
    await apublish("m", {"n": 3}, persist=False)  # ends the read begun before the patch
    assert (await frame(client))["payload"] == {"n": 3}
    await asyncio.wait_for(failed.wait(), 2 * pubsub.READ_SECONDS)
    await apublish("m", {"n": 4}, persist=False)
    assert (await frame(client))["payload"] == {"n": 4}, "the reader reads on after a failure"
    # Word for word channels-redis's, on its logger: what operators and the fault
    # sequencer know to expect while Redis is away.
    logged = [r for r in caplog.records if r.name == "channels_redis.pubsub"]
    assert [r.getMessage() for r in logged] == ["Unexpected exception in receive task"]
    text = "\n".join(
        f"{r.getMessage()}\n{caplog.handler.formatter.formatException(r.exc_info)}\n"
        for r in logged
    )
    assert not LOG_FAULTS.search(KNOWN_LOG_BLOCKS.sub("", text))
    await client.disconnect()
