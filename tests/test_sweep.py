"""
Sweeps: a fan-out to more clients than SWEEP_CHUNK lets the loop run between
chunks, and broadcasts published meanwhile join the writes still to come. Every client
still gets every broadcast once, in order, within the slow-client bound; a topic's
broadcast or a client that connects during a sweep ends the taking.
"""

import asyncio
import json

import pytest
from channels.layers import get_channel_layer

from broadcast import apublish
from broadcast.clients.outbox import Outbox
from broadcast.conf import conf
from broadcast.group import relay_message
from broadcast.seams import servers
from broadcast.stream import fanout
from tests.clients import uvicorn_connection
from tests.test_coalescing import CountingWriter, read_texts

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast_path(settings, monkeypatch):
    settings.BROADCAST_FAST_PATH = True
    monkeypatch.setattr("broadcast.stream.fanout.SWEEP_CHUNK", 4)


class Client:
    """A real uvicorn connection on a socket pair, registered with the hub directly."""

    def __init__(self, send, writer, sock, max_pending):
        self.writer, self.sock, self.cuts = writer, sock, 0
        self.outbox = Outbox(send, max_pending, self._cut, writer)

    def _cut(self):
        self.cuts += 1

    async def texts(self, count=None, timeout=5.0):
        return [json.loads(text) for text in await read_texts(self.sock, count, timeout)]


async def clients(hub, count, max_pending=1_000_000, topics=()):
    made = []
    for _ in range(count):
        send, sock = await uvicorn_connection()
        writer = servers.direct_writer(send)
        assert writer is not None, "the uvicorn seam's probe failed"
        client = Client(send, CountingWriter(writer), sock, max_pending)
        welcome = lambda last_id: json.dumps({"type": "hub.welcome", "last_id": last_id})  # noqa: E731
        assert await hub.register(client.outbox, welcome, topics=topics)
        made.append(client)
    return made


async def one_at_a_time(count, **kwargs):
    """Publish as a loop over ``apublish`` does: each awaited, then a turn of the loop."""
    for n in range(count):
        await apublish("sweep", {"n": n}, persist=False, **kwargs)
        await asyncio.sleep(0)


@pytest.mark.parametrize("chunk", [1, 100])
async def test_broadcasts_published_one_at_a_time_during_a_fan_out_join_its_writes(
    hub, fast_path, monkeypatch, chunk
):
    monkeypatch.setattr("broadcast.stream.fanout.SWEEP_CHUNK", chunk)
    everyone = await clients(hub, 12)
    for client in everyone:
        assert (await client.texts(1))[0]["type"] == "hub.welcome"
        client.writer.writes = 0

    await one_at_a_time(40)
    for client in everyone:
        assert [m["payload"]["n"] for m in await client.texts(40)] == list(range(40))
    writes = sum(client.writer.writes for client in everyone)
    if chunk < len(everyone):  # a sweep: what came during a pass joined the next
        assert writes < 40 * 12 / 2, f"{writes} writes for 40 broadcasts to 12 clients"
    else:  # one chunk: a fan-out is one loop turn, and each broadcast its own write
        assert writes == 40 * 12
    for client in everyone:
        assert await client.texts(timeout=0.2) == []
        client.sock.close()


def frames_in(data):
    count, at = 0, 0
    while at < len(data):
        length, offset = data[at + 1] & 0x7F, 2
        if length == 126:
            length, offset = int.from_bytes(data[at + 2 : at + 4]), 4
        count, at = count + 1, at + offset + length
    return count


def persisted(hub, count):
    """Group messages for the ``count`` ids after the hub's, as the relay receives them."""
    first = hub.last_id + 1
    return [relay_message(json.dumps({"id": n}), n) for n in range(first, first + count)]


def advanced(hub, messages):
    """``messages``, with the position moved past them, as the relay does before a fan-out."""
    for message in messages:
        hub.relay._advance(message["id"])
    return messages


async def test_a_write_in_a_sweep_holds_at_most_coalesce_max_broadcasts(hub, fast_path):
    everyone = await clients(hub, 12)
    for client in everyone:
        await client.texts(1)
    sizes = []
    for client in everyone:
        write = client.writer.write
        client.writer.write = lambda frame, buffered, write=write: (
            sizes.append(frames_in(frame)) or write(frame, buffered)
        )
    first, *rest = persisted(hub, 40)

    def take(room):  # a layer that always holds more than a write may carry
        taken = rest[:room]
        del rest[:room]
        return taken

    await hub.sweep([first], take, 3)
    assert max(sizes) == 3
    for client in everyone:
        assert [m["id"] for m in await client.texts(40)] == [first["id"] + n for n in range(40)]
        client.sock.close()


async def test_a_topic_broadcast_taken_during_a_sweep_goes_after_it_in_order(hub, fast_path):
    everyone = await clients(hub, 10)
    on_x = await clients(hub, 3, topics=("x",))
    for client in everyone + on_x:
        await client.texts(1)

    plan = [None, None, "x", None, "x", None, None, "x", None]
    for n, topic in enumerate(plan):
        await apublish("sweep", {"n": n}, persist=False, topic=topic)
        await asyncio.sleep(0)
    globals_ = [n for n, topic in enumerate(plan) if topic is None]
    for client in everyone:
        assert [m["payload"]["n"] for m in await client.texts(len(globals_))] == globals_
    for client in on_x:
        assert [m["payload"]["n"] for m in await client.texts(len(plan))] == list(range(9))
    for client in everyone + on_x:
        assert await client.texts(timeout=0.2) == []
        client.sock.close()


async def test_a_client_that_connects_during_a_sweep_gets_every_broadcast_after_its_welcome(
    hub, fast_path
):
    everyone = await clients(hub, 12)
    for client in everyone:
        await client.texts(1)
    first, *rest = persisted(hub, 30)
    late = []
    connecting = []

    def take(room):
        if len(rest) == 25:  # a client connects during the sweep's next turn
            connecting.append(asyncio.ensure_future(clients(hub, 1)))
        return advanced(hub, [rest.pop(0)] if rest else [])

    await hub.sweep(advanced(hub, [first]), take, 64)
    late = await connecting[0]
    hub.fan_out_batch(advanced(hub, rest))  # what the sweep left in the layer, as the relay goes on
    newest = first["id"] + 29
    for client in everyone:
        assert [m["id"] for m in await client.texts(30)] == list(range(first["id"], newest + 1))
    (client,) = late
    welcome, *after = await client.texts(timeout=0.5)
    assert welcome["last_id"] < newest
    assert [m["id"] for m in after] == list(range(welcome["last_id"] + 1, newest + 1))
    for client in everyone + late:
        client.sock.close()


async def test_a_client_that_stops_reading_during_sweeps_is_cut_once_and_the_rest_get_it_all(
    hub, fast_path
):
    limit = 60_000
    everyone = await clients(hub, 11, max_pending=limit)
    stuck = everyone.pop()  # never reads: the kernel's buffer fills, then the transport's
    for client in everyone:
        await client.texts(1)
    pad = "x" * 3000

    async def read_all(client):
        return [m["payload"]["n"] for m in await client.texts(300, timeout=15)]

    readers = [asyncio.ensure_future(read_all(client)) for client in everyone]
    for n in range(300):
        await apublish("sweep", {"n": n, "pad": pad}, persist=False)
        await asyncio.sleep(0)
    for reader in readers:
        assert await reader == list(range(300))
    assert stuck.cuts == 1
    assert stuck.outbox.closed
    assert stuck.writer.buffered() <= limit, "no write went past the bound"
    assert all(client.cuts == 0 for client in everyone)
    received = await stuck.texts(timeout=0.5)
    assert [m["payload"]["n"] for m in received[1:]] == list(range(len(received) - 1))
    for client in everyone + [stuck]:
        client.sock.close()


async def test_a_lone_broadcast_to_many_clients_is_one_write_each(hub, fast_path):
    everyone = await clients(hub, 12)
    for client in everyone:
        await client.texts(1)
        client.writer.writes = 0
    await apublish("sweep", {"n": 0}, persist=False)
    for client in everyone:
        assert [m["payload"]["n"] for m in await client.texts(1)] == [0]
    assert [client.writer.writes for client in everyone] == [1] * 12
    assert fanout.SWEEP_CHUNK < 12
    for client in everyone:
        client.sock.close()


async def test_a_sweep_takes_what_the_layer_holds_up_to_a_gap_or_a_topic(hub):
    from broadcast.stream.relay import Relay

    layer = get_channel_layer()
    relay = Relay(layer, conf.BROADCAST_GROUP, hub)
    relay.channel = await layer.new_channel()
    relay.position = 10
    texts = {n: json.dumps({"id": n}) for n in range(11, 20)}
    for message in [
        relay_message(texts[11], 11),
        relay_message("{}", None),
        relay_message(texts[12], 12),
        relay_message(texts[14], 14),  # 13 was lost: the database fills it first
        relay_message(texts[15], 15),
    ]:
        await layer.send(relay.channel, message)
    assert [m["id"] for m in relay._take_more(64)] == [11, None, 12]
    assert [m["id"] for m in relay._carry] == [14]
    assert relay._take_more(64) == [], "nothing passes what waits behind the sweep"
    assert relay.receiver.poll()["id"] == 15, "which is still in the layer, in order"
    relay._carry = []
    await layer.send(relay.channel, relay_message(texts[16], 16, "x"))
    await layer.send(relay.channel, relay_message(texts[17], 17))
    relay.position = 15
    assert relay._take_more(64) == []
    assert [(m["id"], m["topic"]) for m in relay._carry] == [(16, "x")]
    assert [m["id"] for m in relay._take_more(64)] == [], "not even after the topic's"
    assert relay.receiver.poll()["id"] == 17, "which is still in the layer, in order"
