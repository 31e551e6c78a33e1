"""
Coalesced writes: what the relay takes at once goes to each client in one write, in
order, and the slow-client bound, topics and resume work as they do one at a time.
"""

import asyncio
import json
import threading

import pytest
import redis.asyncio
from channels.layers import get_channel_layer
from prometheus_client import REGISTRY

from broadcast import apublish
from broadcast.clients.outbox import Outbox
from broadcast.protocol import text_frame
from broadcast.seams import eager, servers
from broadcast.stream.outgoing import Outgoing
from tests.clients import connect, frame, uvicorn_connection
from tests.conftest import redis_layers

pytestmark = pytest.mark.django_db(transaction=True)


class CountingWriter:
    """A real direct writer, with its writes counted."""

    writes_itself = True

    def __init__(self, writer):
        self.writer, self.writes = writer, 0

    def write(self, frame, buffered):
        self.writes += 1
        return self.writer.write(frame, buffered)

    def buffered(self):
        return self.writer.buffered()

    def close(self, code, reason, grace=None):
        return self.writer.close(code, reason, grace)

    def abort(self):
        self.writer.abort()


async def read_texts(client, count=None, timeout=5.0):
    """
    ``count`` text frames from a raw client socket (server frames are unmasked), or
    with no count, every frame until none arrives for ``timeout``.
    """
    loop, buffer, texts = asyncio.get_running_loop(), b"", []
    async with asyncio.timeout(timeout if count else None):
        while count is None or len(texts) < count:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(client, 65536), timeout)
            except TimeoutError:
                if count is None:
                    return texts
                raise
            buffer += chunk
            while len(buffer) >= 2:
                length, offset = buffer[1] & 0x7F, 2
                if length == 126:
                    length, offset = int.from_bytes(buffer[2:4]), 4
                elif length == 127:
                    length, offset = int.from_bytes(buffer[2:10]), 10
                if len(buffer) < offset + length:
                    break
                texts.append(buffer[offset : offset + length].decode())
                buffer = buffer[offset + length :]
    return texts


@pytest.fixture
async def uvicorn_client(settings):
    settings.BROADCAST_FAST_PATH = True
    send, client = await uvicorn_connection()
    writer = servers.direct_writer(send)
    assert writer is not None, "the uvicorn seam's probe failed"
    yield send, CountingWriter(writer), client
    client.close()


def batch_of(texts, first_id=1):
    return Outgoing.batch([Outgoing.of_text(t, first_id + n) for n, t in enumerate(texts)])


async def test_a_batch_is_one_write_of_its_frames_in_order(uvicorn_client):
    send, writer, client = uvicorn_client
    outbox = Outbox(send, 1_000_000, lambda: None, writer)
    texts = [f"message {n}" for n in range(20)]
    batch = batch_of(texts)
    assert batch.frame == b"".join(text_frame(t.encode()) for t in texts)
    outbox.push(batch)
    assert writer.writes == 1
    assert await read_texts(client, 20) == texts


async def test_a_batch_the_client_cannot_take_whole_goes_one_by_one_and_cuts_it_in_order(
    uvicorn_client,
):
    send, writer, client = uvicorn_client
    cuts = []
    outbox = Outbox(send, 50_000, lambda: cuts.append(1), writer)
    pushed, offered = [], []
    # The client reads nothing: the kernel's buffer fills, then the transport's.
    for n in range(400):
        texts = [f"{n}.{k}:" + "x" * 2000 for k in range(8)]
        offered += texts
        outbox.push(batch_of(texts, n * 8 + 1))
        if outbox.closed:
            break
        pushed += texts
    assert cuts == [1], "a client over the bound is cut, once"
    assert writer.buffered() <= 50_000, "no batch went past the bound"
    # What did reach the client is every message up to the cut, in order, none torn
    # (the batch that did not fit went one by one, up to the message over the bound).
    received = await read_texts(client, timeout=0.5)
    assert received == offered[: len(received)]
    assert len(received) >= len(pushed)
    assert writer.writes < len(received), "batches went in one write while they fitted"


async def test_a_held_outbox_takes_a_batch_behind_history_and_skips_replayed_ids(
    uvicorn_client,
):
    send, writer, client = uvicorn_client
    outbox = Outbox(send, 1_000_000, lambda: None, writer)
    outbox.hold()
    outbox.push(batch_of(["live 3", "live 4", "live 5"], first_id=3))
    assert writer.writes == 0
    for n in (1, 2, 3):  # history, of which id 3 also came live
        assert await outbox.write_paced(Outgoing.of_text(f"history {n}", n), 1e12)
    outbox.release(after_id=3)
    assert await read_texts(client, 5) == [
        "history 1", "history 2", "history 3", "live 4", "live 5"
    ]  # fmt: skip
    # History was ahead of the live stream: live copies of ids 2 and 3 come late.
    outbox.push(Outgoing.batch([Outgoing.of_text(f"live {n}", n) for n in (2, 3, 6)]))
    outbox.push(batch_of(["live 7", "live 8"], first_id=7))
    assert await read_texts(client, 3) == ["live 6", "live 7", "live 8"]


def batch_samples():
    count = REGISTRY.get_sample_value("broadcast_fan_out_batch_count") or 0
    total = REGISTRY.get_sample_value("broadcast_fan_out_batch_sum") or 0
    return count, total


async def test_a_burst_the_layer_holds_is_fanned_out_together_in_order(hub):
    client = await connect()
    before = batch_samples()
    # Published back to back: the in-memory layer holds them all when the relay wakes.
    await asyncio.gather(*(apublish("burst", {"n": n}, persist=False) for n in range(30)))
    got = [(await frame(client))["payload"]["n"] for _ in range(30)]
    assert got == list(range(30))
    fan_outs, broadcasts = (a - b for a, b in zip(batch_samples(), before, strict=True))
    assert broadcasts == 30
    assert fan_outs < 30, f"{fan_outs} fan-outs for 30 broadcasts held at once"
    await client.disconnect()


async def test_without_coalescing_each_broadcast_is_its_own_fan_out(hub, monkeypatch):
    monkeypatch.setattr("broadcast.stream.relay.COALESCE_MAX", 1)
    client = await connect()
    before = batch_samples()
    await asyncio.gather(*(apublish("burst", {"n": n}, persist=False) for n in range(10)))
    assert [(await frame(client))["payload"]["n"] for _ in range(10)] == list(range(10))
    fan_outs, broadcasts = (a - b for a, b in zip(batch_samples(), before, strict=True))
    assert (fan_outs, broadcasts) == (10, 10)
    await client.disconnect()


async def test_a_coalesced_burst_across_topics_gives_each_client_its_own_in_order(hub):
    everyone = await connect()
    on_x = await connect(query="?topics=x")
    on_x_and_y = await connect(query="?topics=x,y")
    for client in (on_x, on_x_and_y):
        assert (await frame(client))["type"] == "hub.subscribed"
    plan = [None, "x", "y", None, "x", "z", "y", None]
    await asyncio.gather(
        *(apublish("burst", {"n": n}, topic=t, persist=False) for n, t in enumerate(plan))
    )

    async def numbers(client, count):
        return [(await frame(client))["payload"]["n"] for _ in range(count)]

    assert await numbers(everyone, 3) == [0, 3, 7]
    assert await numbers(on_x, 5) == [0, 1, 3, 4, 7]
    assert await numbers(on_x_and_y, 7) == [0, 1, 2, 3, 4, 6, 7]
    for client in (everyone, on_x, on_x_and_y):
        assert await client.receive_nothing(timeout=0.2)
        await client.disconnect()


async def test_persisted_ids_of_a_coalesced_burst_stay_in_order_and_whole(hub):
    client = await connect()
    ids = [m["id"] for m in await asyncio.gather(*(apublish("p", {"n": n}) for n in range(25)))]
    got = [(await frame(client))["id"] for _ in range(25)]
    assert got == sorted(ids)
    assert hub.last_id == max(ids)
    await client.disconnect()


@pytest.mark.redis
async def test_a_waiting_receive_cancelled_leaves_channels_redis_able_to_receive(redis_layer):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    started = eager.start(layer.receive(channel))
    assert not started.done  # nothing there yet: it waits on Redis
    await asyncio.sleep(0.05)  # its helper tasks run (one takes the receive lock)
    started.cancel()
    await layer.send(channel, {"type": "after"})
    # A receive abandoned without its cleanup would keep the layer's receive lock.
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "after"}
    await asyncio.sleep(0.05)
    assert json.dumps(layer.receive_buffer) == "{}"


@pytest.mark.redis
async def test_channels_redis_core_hands_over_what_it_holds_in_one_round_trip(redis_layer):
    from broadcast.seams.layers import redis as redis_layer_seam
    from broadcast.stream.relay import RELAY_PREFIX

    layer = get_channel_layer()
    assert redis_layer_seam.can_take_queued(layer)
    relay = await layer.new_channel(prefix=RELAY_PREFIX)
    other = await layer.new_channel(prefix=RELAY_PREFIX)
    # Both channels share the process's queue in Redis, as the relay and /healthz do.
    for n in range(5):
        await layer.send(relay, {"type": "m", "n": n})
        if n == 2:
            await layer.send(other, {"type": "for the other channel"})
    taken = await redis_layer_seam.take_queued(layer, relay, 64)
    assert [m["n"] for m in taken] == [0, 1, 2, 3, 4]
    assert await redis_layer_seam.take_queued(layer, relay, 64) == []
    # The other channel's message is back in Redis, where the layer's own receive finds it.
    assert await asyncio.wait_for(layer.receive(other), 2) == {"type": "for the other channel"}


@pytest.mark.redis
async def test_a_receive_begun_while_the_relay_takes_its_queue_still_gets_its_message(
    redis_layer,
):
    from broadcast.seams.layers import redis as redis_layer_seam
    from broadcast.stream.relay import RELAY_PREFIX

    layer = get_channel_layer()
    relay = await layer.new_channel(prefix=RELAY_PREFIX)
    health = await layer.new_channel(prefix=RELAY_PREFIX)
    await layer.send(health, {"type": "healthz"})
    # /healthz receives on the relay's queue. Its receive begins while the relay's take
    # is in flight, and blocks in Redis for the queue's next message: the message the
    # take carried off must reach it all the same, with nothing else sent.
    taking = asyncio.ensure_future(redis_layer_seam.take_queued(layer, relay, 64))
    receiving = asyncio.ensure_future(layer.receive(health))
    assert await taking == []
    assert await asyncio.wait_for(receiving, 2) == {"type": "healthz"}


@pytest.mark.redis
async def test_a_message_that_cannot_go_back_to_redis_waits_in_the_buffer(
    redis_layer, monkeypatch, caplog
):
    import redis.exceptions

    from broadcast.seams.layers import redis as redis_layer_seam
    from broadcast.stream.relay import RELAY_PREFIX

    layer = get_channel_layer()
    relay = await layer.new_channel(prefix=RELAY_PREFIX)
    health = await layer.new_channel(prefix=RELAY_PREFIX)
    await layer.send(relay, {"type": "m"})
    await layer.send(health, {"type": "healthz"})
    connection = layer.connection(layer.consistent_hash(layer.non_local_name(relay)))

    def gone(*args, **kwargs):
        raise redis.exceptions.ConnectionError("Connection closed by server.")

    # Redis goes away between the take and the return: what was taken is not lost.
    monkeypatch.setattr(connection, "pipeline", gone)
    assert await redis_layer_seam.take_queued(layer, relay, 64) == [{"type": "m"}]
    assert "Could not return 1 message(s) to Redis" in caplog.text
    monkeypatch.undo()
    assert await asyncio.wait_for(layer.receive(health), 2) == {"type": "healthz"}


@pytest.mark.redis
async def test_a_relay_on_channels_redis_core_takes_a_backlog_at_once_in_order(redis_layer, hub):
    from broadcast.conf import conf
    from broadcast.group import relay_message

    client = await connect()
    layer = get_channel_layer()
    before = batch_samples()

    async def burst():
        for n in range(40):
            text = json.dumps({"id": None, "type": "m", "topic": None, "payload": {"n": n}})
            await layer.group_send(conf.BROADCAST_GROUP, relay_message(text, None))

    # Sent from another thread while this loop is held: the relay, as if it had fallen
    # behind, finds them queued in Redis.
    sender = threading.Thread(target=asyncio.run, args=(burst(),))
    sender.start()
    sender.join()
    got = [(await frame(client))["payload"]["n"] for _ in range(40)]
    assert got == list(range(40))
    fan_outs, broadcasts = (a - b for a, b in zip(batch_samples(), before, strict=True))
    assert broadcasts == 40
    assert fan_outs <= 2, f"{fan_outs} fan-outs for 40 broadcasts queued in Redis"
    await client.disconnect()


@pytest.mark.redis
async def test_a_core_layer_whose_internals_moved_is_received_one_by_one(
    redis_layer, monkeypatch, caplog
):
    from broadcast.seams.layers import redis as redis_layer_seam

    monkeypatch.setattr(redis_layer_seam, "probes", {})
    monkeypatch.setattr(redis_layer_seam, "TAKE_NAMES", ("receive_count", "gone_in_a_release"))
    assert not redis_layer_seam.can_take_queued(get_channel_layer())
    assert "RedisChannelLayer.gone_in_a_release" in caplog.text
    # The backpressure seam reads other names, and is still on.
    assert redis_layer_seam.key_layout_known(get_channel_layer())


async def test_daphnes_public_path_counts_a_batch_once_against_the_bound():
    # Found by CI's fast-path-off leg: the public path's writer counts what is written
    # while Twisted's producer is paused, and writes nothing itself. Offered a batch
    # whole and then its messages one by one, it counted the batch twice, and a client
    # within the bound was cut.
    from types import SimpleNamespace

    from broadcast.seams.servers.daphne import PausedWriter

    sent = []

    async def send(event):
        sent.append(event["text"])

    transport = SimpleNamespace(producerPaused=True, bufferSize=65536, disconnected=0)
    writer = PausedWriter(SimpleNamespace(transport=transport))
    outbox = Outbox(send, 256 * 1024, lambda: None, writer)
    texts = [f"{n}:" + "x" * 998 for n in range(100)]
    outbox.push(batch_of(texts))
    await asyncio.sleep(0)
    assert sent == texts and not outbox.closed
    assert writer.buffered() == 65536 + sum(len(t) + 4 for t in texts)  # each frame once


async def publish_concurrently(count, start=0):
    """``count`` ephemeral publishes issued at once, as concurrent requests would."""
    return await asyncio.gather(
        *(apublish("m", {"n": n}, persist=False) for n in range(start, start + count)),
        return_exceptions=True,
    )


@pytest.mark.redis
async def test_a_burst_published_at_once_on_pubsub_reaches_the_relay_as_one_batch(
    pubsub_layer, hub
):
    client = await connect()
    for start in (0, 50):  # and again, after the first pipeline's sender has ended
        before = batch_samples()
        assert all(isinstance(r, dict) for r in await publish_concurrently(50, start))
        got = [(await frame(client))["payload"]["n"] for _ in range(50)]
        assert got == list(range(start, start + 50))
        fan_outs, broadcasts = (a - b for a, b in zip(batch_samples(), before, strict=True))
        assert broadcasts == 50
        # One round trip apart, a relay receives them one by one: about 50 fan-outs.
        assert fan_outs <= 2, f"{fan_outs} fan-outs for a burst of 50 published at once"
    await client.disconnect()


class GroupMessages:
    """A plain redis-py subscriber to every channel: what each server process receives."""

    def __init__(self, url):
        self.client = redis.asyncio.Redis.from_url(url)
        self.pubsub = self.client.pubsub()

    async def __aenter__(self):
        await self.pubsub.psubscribe("*")
        while await self.pubsub.get_message(timeout=1) is None:  # the subscription's answer
            pass
        return self

    async def count(self, quiet=0.3):
        """How many messages arrived, until none arrives for ``quiet`` seconds."""
        count = 0
        while await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=quiet):
            count += 1
        return count

    async def __aexit__(self, *exc):
        for each in (self.pubsub, self.client):  # aclose from redis-py 5.0.1, close before
            await getattr(each, "aclose", each.close)()


@pytest.mark.redis
async def test_a_burst_published_at_once_on_pubsub_reaches_each_process_as_one_message(
    pubsub_layer, hub
):
    client = await connect()
    async with GroupMessages(pubsub_layer) as received:
        assert all(isinstance(r, dict) for r in await publish_concurrently(50))
        assert [(await frame(client))["payload"]["n"] for _ in range(50)] == list(range(50))
        # Each is one parse, decode and wake-up in every subscribed process.
        assert await received.count() == 1
    await client.disconnect()


@pytest.mark.redis
async def test_a_burst_too_large_for_one_message_travels_in_several_in_order(
    pubsub_layer, hub, settings
):
    from broadcast.seams.layers.pubsub import BATCH_MAX_BYTES

    settings.BROADCAST_MAX_MESSAGE_BYTES = BATCH_MAX_BYTES
    client = await connect()
    text = "x" * (BATCH_MAX_BYTES // 3)
    async with GroupMessages(pubsub_layer) as received:
        results = await asyncio.gather(
            *(apublish("big", {"n": n, "text": text}, persist=False) for n in range(7))
        )
        assert all(isinstance(r, dict) for r in results)
        got = [await frame(client) for _ in range(7)]
        assert [m["payload"]["n"] for m in got] == list(range(7))
        assert all(m["payload"]["text"] == text for m in got)
        assert await received.count() == 4  # two to a batch, the last alone


async def test_a_relay_unpacks_a_batch_in_place_among_single_messages(hub):
    from broadcast.group import batch_message, relay_message

    client = await connect()
    await client.send_json_to({"type": "hub.subscribe", "topics": ["x"]})
    assert (await frame(client))["type"] == "hub.subscribed"
    layer, channel = get_channel_layer(), hub.relay.channel
    texts = [json.dumps({"type": "m", "payload": {"n": n}}) for n in range(6)]
    await layer.send(channel, relay_message(texts[0], None))
    await layer.send(
        channel,
        batch_message(
            [
                relay_message(texts[1], None),
                relay_message(texts[2], None, "x"),
                relay_message(texts[3], None, "not-subscribed"),
                relay_message(texts[4], None),
            ]
        ),
    )
    await layer.send(channel, relay_message(texts[5], None))
    assert [(await frame(client))["payload"]["n"] for _ in range(5)] == [0, 1, 2, 4, 5]
    assert await client.receive_nothing(timeout=0.3)
    await client.disconnect()


@pytest.mark.redis
async def test_a_publish_cancelled_before_its_pipeline_left_is_not_sent(pubsub_layer, hub):
    client = await connect()
    tasks = [asyncio.ensure_future(apublish("m", {"n": n}, persist=False)) for n in range(5)]
    await asyncio.sleep(0)  # every publish is queued; the pipeline has not left
    tasks[2].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert tasks[2].cancelled()
    assert [(await frame(client))["payload"]["n"] for _ in range(4)] == [0, 1, 3, 4]
    assert await client.receive_nothing(timeout=0.3)
    await client.disconnect()


async def test_every_publish_in_a_failed_pipeline_fails_and_the_next_is_tried_again(settings):
    from broadcast.publishing.api import PublishFailed

    settings.CHANNEL_LAYERS = redis_layers(
        "redis://127.0.0.1:1/0", "pubsub.RedisPubSubChannelLayer"
    )
    for _ in range(2):  # a failed pipeline leaves no sender behind to wait on
        results = await asyncio.wait_for(publish_concurrently(5), 10)
        assert [type(result) for result in results] == [PublishFailed] * 5


@pytest.mark.redis
async def test_a_pubsub_layer_whose_internals_moved_publishes_one_by_one(
    pubsub_layer, hub, monkeypatch, caplog
):
    from broadcast.seams.layers import pubsub

    monkeypatch.setattr(pubsub, "probes", {})
    monkeypatch.setattr(pubsub, "SHARD_NAMES", ("_lock", "gone_in_a_release"))
    client = await connect()
    assert all(isinstance(r, dict) for r in await publish_concurrently(10))
    assert [(await frame(client))["payload"]["n"] for _ in range(10)] == list(range(10))
    assert "RedisSingleShardConnection.gone_in_a_release" in caplog.text
    assert "pipelined publish fast path off" in caplog.text
    await client.disconnect()
