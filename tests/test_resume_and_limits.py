"""Resume after a reconnect, and what a hostile client meets (channels.testing)."""

import json

import pytest
from channels.testing import WebsocketCommunicator

from broadcast import apublish
from broadcast.clients.consumer import BroadcastConsumer
from tests.clients import connect, frame

pytestmark = pytest.mark.django_db(transaction=True)


async def publish_many(count, start=0):
    return [(await apublish("news", {"n": start + n}))["id"] for n in range(count)]


async def test_a_client_resuming_with_last_id_gets_what_it_missed_then_live(hub):
    ids = await publish_many(4)
    client = await connect(query=f"?last_id={ids[0]}")
    replayed = [await frame(client) for _ in range(3)]
    assert [f["id"] for f in replayed] == ids[1:]
    assert [f["payload"] for f in replayed] == [{"n": 1}, {"n": 2}, {"n": 3}]
    resumed = await frame(client)
    assert resumed["type"] == "hub.resumed"
    assert resumed["payload"] == {"from": ids[0], "count": 3, "last_id": ids[-1]}
    (live,) = await publish_many(1, start=4)
    assert (await frame(client))["id"] == live
    assert await client.receive_nothing(timeout=0.1)
    await client.disconnect()


async def test_a_hub_resume_frame_replays_too(hub):
    ids = await publish_many(2)
    client = await connect()
    await client.send_to(text_data=json.dumps({"type": "hub.resume", "last_id": 0}))
    assert [(await frame(client))["id"] for _ in range(2)] == ids
    assert (await frame(client))["type"] == "hub.resumed"
    await client.disconnect()


async def test_a_gap_larger_than_history_gets_a_reset(hub, settings):
    settings.BROADCAST_HISTORY_LIMIT = 2
    ids = await publish_many(3)
    client = await connect(query="?last_id=0")
    reset = await frame(client)
    assert reset["type"] == "hub.reset"
    assert reset["payload"] == {"last_id": ids[-1], "from": 0}
    (live,) = await publish_many(1)
    assert (await frame(client))["id"] == live
    await client.disconnect()


async def test_history_older_than_the_ttl_gets_a_reset(hub, settings):
    from django.utils import timezone

    from broadcast.models import Broadcast

    await publish_many(2)
    await Broadcast.objects.aupdate(sent_at=timezone.now() - timezone.timedelta(hours=2))
    settings.BROADCAST_HISTORY_TTL = 3600
    client = await connect(query="?last_id=0")
    assert (await frame(client))["type"] == "hub.reset"
    await client.disconnect()


async def test_history_with_deleted_rows_gets_a_reset_not_a_silent_gap(hub):
    from broadcast.models import Broadcast

    ids = await publish_many(3)
    await Broadcast.objects.filter(seq=ids[1]).adelete()  # pruned, or deleted in the admin
    client = await connect(query=f"?last_id={ids[0]}")
    assert (await frame(client))["type"] == "hub.reset"
    await client.disconnect()


async def test_a_failed_send_burns_its_id_without_forcing_a_reset(hub):
    from broadcast.models import Broadcast

    ids = await publish_many(3)
    await Broadcast.objects.filter(seq=ids[1]).aupdate(status=Broadcast.Status.FAILED)
    client = await connect(query=f"?last_id={ids[0]}")
    assert (await frame(client))["id"] == ids[2]
    assert (await frame(client))["type"] == "hub.resumed"
    await client.disconnect()


async def test_resuming_from_an_id_this_process_has_not_relayed_yet_is_no_reset(hub):
    """
    Another process can welcome a client with an id this one has not relayed: a
    publisher between commit and send (or killed there). Found by the fault sequencer:
    such a client, moved here, was told hub.reset, and then got that id after all.
    """
    from django.utils import timezone

    from broadcast.models import Broadcast

    bystander = await connect()  # the process is relaying
    ids = await publish_many(2)
    in_flight = ids[-1] + 1
    await Broadcast.objects.acreate(
        type="news", payload={"n": "in flight"}, seq=in_flight, sent_at=timezone.now()
    )  # committed by a publisher that has not sent it
    client = await connect(query=f"?last_id={in_flight}")
    assert client.welcome["payload"]["last_id"] == ids[-1]
    resumed = await frame(client)
    assert (resumed["type"], resumed["payload"]) == (
        "hub.resumed", {"from": in_flight, "count": 0, "last_id": in_flight},
    )  # fmt: skip
    (live,) = await publish_many(1)  # this process fills the gap with the in-flight id
    assert live == in_flight + 1
    assert (await frame(client))["id"] == live  # not the in-flight id, which it had
    assert await client.receive_nothing(timeout=0.1)
    assert [(await frame(bystander))["id"] for _ in range(4)] == [*ids, in_flight, live]
    await client.disconnect()
    await bystander.disconnect()


async def test_an_id_from_the_future_gets_a_reset(hub):
    await publish_many(1)
    client = await connect(query="?last_id=999")
    assert (await frame(client))["type"] == "hub.reset"
    await client.disconnect()


async def test_a_bad_last_id_is_reported_and_ignored(hub):
    client = await connect(query="?last_id=abc")
    error = await frame(client)
    assert error["type"] == "hub.error"
    assert "last_id" in error["payload"]["error"]
    await client.send_to(text_data=json.dumps({"type": "hub.resume", "last_id": -3}))
    assert (await frame(client))["type"] == "hub.error"
    await client.disconnect()


async def test_a_text_frame_over_the_limit_closes_with_1009(hub, settings):
    settings.BROADCAST_MAX_INCOMING_BYTES = 100
    client = await connect()
    await client.send_to(text_data="x" * 101)
    assert (await client.receive_output(timeout=2))["code"] == 1009


async def test_a_frame_flood_closes_with_1008(hub, settings):
    settings.BROADCAST_MAX_INCOMING_RATE = 5
    client = await connect()
    for _ in range(10):  # the burst allowance: twice the rate
        await client.send_to(text_data='{"type": "hub.ping"}')
        assert (await frame(client))["type"] == "hub.pong"
    await client.send_to(text_data='{"type": "hub.ping"}')
    assert (await client.receive_output(timeout=2))["code"] == 1008


async def test_connections_over_the_limit_are_closed_with_1013(hub, settings):
    settings.BROADCAST_MAX_CONNECTIONS = 2
    first, second = await connect(), await connect()
    third = WebsocketCommunicator(BroadcastConsumer.as_asgi(), "/ws/broadcast/")
    connected, _ = await third.connect()
    assert connected  # accepted, then closed: a close code needs an open socket
    assert (await third.receive_output(timeout=2))["code"] == 1013
    assert hub.current == 2
    await first.disconnect()
    await second.disconnect()


async def test_a_client_connecting_while_the_process_stops_is_told_to_go_elsewhere(hub):
    hub.stopping = True  # hub.shutdown() sets it before closing its clients
    late = WebsocketCommunicator(BroadcastConsumer.as_asgi(), "/ws/broadcast/")
    connected, _ = await late.connect()
    assert connected
    assert (await late.receive_output(timeout=2))["code"] == 1012
    assert hub.current == 0
