"""The consumer and the process hub, through channels.testing (in-memory layer)."""

import gc
import json
import weakref

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from broadcast import apublish
from broadcast.clients.consumer import BroadcastConsumer
from broadcast.group import relay_message
from broadcast.models import Broadcast
from hubsite.asgi import application
from tests.clients import PATH, connect, frame

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_client_is_welcomed_with_the_last_broadcast_id(hub):
    first = await connect()
    welcome = first.welcome
    assert welcome["type"] == "hub.welcome"
    assert welcome["id"] is None
    assert welcome["payload"] == {"last_id": 0}
    sent = await apublish("news", {"n": 1})
    assert (await frame(first))["id"] == sent["id"]

    second = await connect()
    assert second.welcome["payload"] == {"last_id": sent["id"]}
    await first.disconnect()
    await second.disconnect()


async def test_a_closed_connection_is_freed_without_the_garbage_collector(hub):
    # A reference cycle between the consumer and its outbox would keep every closed
    # connection (scope, consumer, outbox, send) until a full collection: memory that
    # grows with churn, and collections that cost more while clients connect.
    known = {id(o) for o in gc.get_objects() if isinstance(o, BroadcastConsumer)}
    client = await connect()
    (consumer,) = [
        weakref.ref(o)
        for o in gc.get_objects()
        if isinstance(o, BroadcastConsumer) and id(o) not in known
    ]
    gc.disable()
    try:
        await client.disconnect()
        del client
        assert consumer() is None
    finally:
        gc.enable()


async def test_a_broadcast_the_layer_lost_is_sent_from_the_database_before_the_next(hub, caplog):
    client = await connect()
    first = await apublish("news", {"n": 1})
    assert await frame(client) == first
    # The relay misses the next one, as when channels-redis drops a message past its
    # capacity for a relay that fell behind: it is sent while the relay is not a member.
    layer = get_channel_layer()
    await layer.group_discard("broadcast", hub.relay.channel)
    lost = await apublish("news", {"n": 2})
    await layer.group_add("broadcast", hub.relay.channel)
    assert await client.receive_nothing(timeout=0.1)

    after = await apublish("news", {"n": 3})
    assert [await frame(client), await frame(client)] == [lost, after]
    assert await client.receive_nothing(timeout=0.1)
    assert f"missed persisted broadcast(s) {lost['id']} in the channel layer" in caplog.text
    await client.disconnect()


async def test_ids_burnt_by_failed_sends_are_not_taken_for_losses(hub, caplog):
    client = await connect()
    first = await apublish("news", {"n": 1})
    assert await frame(client) == first
    await sync_to_async(Broadcast.objects.create)(
        type="news", payload={}, seq=first["id"] + 1, status=Broadcast.Status.FAILED
    )
    after = await apublish("news", {"n": 2})
    assert after["id"] == first["id"] + 2
    assert await frame(client) == after
    assert await client.receive_nothing(timeout=0.1)
    assert "missed" not in caplog.text
    await client.disconnect()


async def test_every_client_gets_every_broadcast_once_and_in_order(hub):
    clients = [await connect() for _ in range(3)]
    sent = [await apublish("tick", {"n": n}) for n in range(5)]
    for client in clients:
        received = [await frame(client) for _ in sent]
        assert received == sent
        assert await client.receive_nothing(timeout=0.1)
    assert [envelope["id"] for envelope in sent] == sorted({e["id"] for e in sent})
    for client in clients:
        await client.disconnect()


async def test_the_envelope_is_the_documented_shape(hub):
    client = await connect()
    sent = await apublish("announcement", {"text": "Deploy at 18:00"})
    received = await frame(client)
    assert set(received) == {"id", "type", "topic", "payload", "timestamp"}
    assert received["topic"] is None
    assert received["type"] == "announcement"
    assert received["payload"] == {"text": "Deploy at 18:00"}
    assert received["id"] == sent["id"] == (await Broadcast.objects.aget()).seq
    await client.disconnect()


async def test_ephemeral_broadcasts_have_a_null_id_and_no_row(hub):
    client = await connect()
    await apublish("typing", {"who": "ada"}, persist=False)
    received = await frame(client)
    assert received["id"] is None
    assert received["payload"] == {"who": "ada"}
    assert await Broadcast.objects.acount() == 0
    await client.disconnect()


async def test_a_process_joins_the_group_once_and_stays_while_it_serves(hub):
    layer = get_channel_layer()
    clients = [await connect() for _ in range(4)]
    assert list(layer.groups["broadcast"]) == [hub.relay.channel]
    assert hub.current == 4
    for client in clients:
        await client.disconnect()
    assert hub.current == 0
    # Emptied, the process keeps its membership and relay: the next client must not
    # wait for a relay to stop inside the layer's receive.
    assert list(layer.groups["broadcast"]) == [hub.relay.channel]
    assert hub.relay_state == "running"
    late = await connect()
    sent = await apublish("news", None)
    assert (await frame(late))["id"] == sent["id"]
    await late.disconnect()
    await hub.close()
    assert not layer.groups.get("broadcast")


async def test_consumers_have_no_channel_layer_queue_of_their_own(hub):
    layer = get_channel_layer()
    clients = [await connect() for _ in range(3)]
    assert list(layer.channels) == [hub.relay.channel]  # one for the process, none per client
    await apublish("x", None, persist=False)
    for client in clients:
        assert (await frame(client))["type"] == "x"
    assert set(layer.channels) <= {hub.relay.channel}
    for client in clients:
        await client.disconnect()


async def test_a_plain_group_send_reaches_every_client(hub):
    clients = [await connect() for _ in range(2)]
    text = (
        '{"id":null,"type":"custom","topic":null,"payload":[1,2],'
        '"timestamp":"2026-01-01T00:00:00.000Z"}'
    )
    await get_channel_layer().group_send("broadcast", {"type": "broadcast.message", "text": text})
    for client in clients:
        assert await client.receive_from(timeout=2) == text
    await get_channel_layer().group_send("broadcast", relay_message(text, None))
    for client in clients:
        assert await client.receive_from(timeout=2) == text
        await client.disconnect()


async def test_clients_cannot_publish(hub):
    talker, listener = await connect(), await connect()
    await talker.send_to(text_data=json.dumps({"type": "news", "payload": {"spoof": True}}))
    error = await frame(talker)
    assert error["type"] == "hub.error"
    assert "clients cannot publish" in error["payload"]["error"]
    await talker.send_to(text_data="not json")
    assert (await frame(talker))["payload"] == {"error": "malformed JSON"}
    assert await listener.receive_nothing(timeout=0.2)
    await talker.disconnect()
    await listener.disconnect()


async def test_a_binary_frame_closes_with_1003(hub):
    client = await connect()
    await client.send_to(bytes_data=b"\x00\x01")
    assert await client.receive_output(timeout=2) == {
        "type": "websocket.close",
        "code": 1003,
        "reason": "binary frames are not accepted",
    }


async def test_a_foreign_origin_is_refused():
    communicator = WebsocketCommunicator(
        application, PATH, headers=[(b"origin", b"http://evil.example")]
    )
    connected, _ = await communicator.connect()
    assert not connected


async def test_an_allowed_origin_is_accepted(hub):
    client = await connect(application, headers=[(b"origin", b"http://localhost:8000")])
    assert client.welcome["type"] == "hub.welcome"
    await client.disconnect()


async def test_counts_are_written_on_the_heartbeat_not_per_connect(hub):
    from broadcast.models import HubProcess

    clients = [await connect() for _ in range(3)]
    await hub.counts.write()
    row = await HubProcess.objects.aget()
    assert (row.current, row.peak, row.total_accepted) == (3, 3, 3)
    await clients[0].disconnect()
    row = await HubProcess.objects.aget()
    assert row.current == 3  # not written on disconnect
    await hub.counts.write()
    row = await HubProcess.objects.aget()
    assert (row.current, row.peak, row.total_accepted) == (2, 3, 3)
    assert await sync_to_async(HubProcess.objects.live_total)() == 2
    for client in clients[1:]:
        await client.disconnect()


async def test_require_auth_refuses_anonymous_clients_at_the_handshake(settings):
    settings.BROADCAST_REQUIRE_AUTH = True
    communicator = WebsocketCommunicator(
        application, PATH, headers=[(b"origin", b"http://localhost:8000")]
    )
    connected, _ = await communicator.connect()
    assert not connected


async def test_require_auth_admits_a_logged_in_user(settings, hub):
    from django.contrib.auth.models import User
    from django.test import AsyncClient

    settings.BROADCAST_REQUIRE_AUTH = True
    user = await User.objects.acreate_user("reader", password="pw")
    browser = AsyncClient()
    await browser.aforce_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={browser.cookies[settings.SESSION_COOKIE_NAME].value}"
    client = await connect(
        application, headers=[(b"origin", b"http://localhost:8000"), (b"cookie", cookie.encode())]
    )
    assert client.welcome["type"] == "hub.welcome"
    await client.disconnect()
