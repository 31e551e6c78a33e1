"""
State that one operation leaves for the next, through channels.testing: a handler
that raises, a writer that fails, a relay that fails, a burst against the
connection cap, a resume while broadcasts flow.
"""

import asyncio
import json
import threading

import pytest
from channels.layers import get_channel_layer

from broadcast import apublish
from broadcast.clients.consumer import BroadcastConsumer
from broadcast.clients.outbox import Outbox
from broadcast.stream.outgoing import Outgoing
from tests.clients import connect, frame

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_deeply_nested_frame_is_malformed_json_not_a_crash(hub):
    client = await connect()
    await client.send_to(text_data="[" * 1500 + "]" * 1500)
    reply = await frame(client)
    # Python 3.11 and 3.12 stop at this depth (malformed JSON); 3.13 parses it (a
    # list, so an unknown frame type). Either way an error frame, not a crash.
    assert reply["type"] == "hub.error"
    assert hub.current == 1
    await client.disconnect()
    assert hub.current == 0


async def test_a_handler_that_raises_closes_with_1011_and_frees_the_slot(hub, monkeypatch):
    def broken(self, text_data=None, bytes_data=None):
        raise RuntimeError("a bug in a handler")

    client = await connect()
    monkeypatch.setattr(BroadcastConsumer, "receive", broken)
    await client.send_to(text_data='{"type": "hub.ping"}')
    closed = await client.receive_output(timeout=2)
    assert closed == {"type": "websocket.close", "code": 1011, "reason": "internal error"}
    await client.wait(timeout=2)
    assert hub.current == 0


async def test_the_connection_cap_holds_for_a_burst_of_connects(hub, settings):
    settings.BROADCAST_MAX_CONNECTIONS = 3
    from channels.testing import WebsocketCommunicator

    from tests.clients import PATH

    communicators = [WebsocketCommunicator(BroadcastConsumer.as_asgi(), PATH) for _ in range(8)]
    await asyncio.gather(*(c.connect() for c in communicators))
    outputs = [await c.receive_output(timeout=2) for c in communicators]
    welcomed = [o for o in outputs if o.get("text", "").find('"hub.welcome"') >= 0]
    refused = [o for o in outputs if o.get("type") == "websocket.close"]
    assert len(welcomed) == 3 and len(refused) == 5
    assert all(o["code"] == 1013 for o in refused)
    assert hub.current == 3
    for c in communicators:
        await c.disconnect()


class FailingWriter:
    """A direct writer whose server changed under it: every call raises."""

    writes_itself = True

    def write(self, frame, buffered):
        raise AttributeError("'Protocol' object has no attribute 'state'")

    def buffered(self):
        raise AttributeError("'Transport' object has no attribute 'dataBuffer'")

    def close(self, code, reason, grace=None):
        raise AttributeError("gone")

    def abort(self):
        raise AttributeError("gone")


async def test_a_failing_direct_writer_falls_back_to_the_asgi_send(caplog):
    sent = []

    async def send(event):
        sent.append(event["text"])

    outbox = Outbox(send, 10_000, lambda: None, FailingWriter())
    outbox.push(Outgoing.of_text("a"))
    outbox.push(Outgoing.of_text("b"))
    await asyncio.sleep(0)
    assert sent == ["a", "b"] and not outbox.closed and outbox.writer is None
    assert "using the ASGI send" in caplog.text


async def test_a_relay_that_fails_restarts_and_delivers_again(hub, monkeypatch, caplog):
    client = await connect()
    real_fan_out, failures = hub.fan_out_batch, []

    def fan_out_failing_once(messages):
        if not failures:
            failures.append(messages)
            raise RuntimeError("a bug in the fan-out")
        real_fan_out(messages)

    monkeypatch.setattr(hub, "fan_out_batch", fan_out_failing_once)
    monkeypatch.setattr("broadcast.stream.relay.RESTART_FIRST_DELAY", 0.05)
    first = await apublish("news", {"n": 1})
    second = await apublish("news", {"n": 2})
    # The broadcast in hand when the relay failed is caught up from the database.
    assert [(await frame(client))["id"] for _ in range(2)] == [first["id"], second["id"]]
    assert hub.relay.restarts == 1 and hub.relay_state == "running"
    assert "Relay failed; restarting" in caplog.text
    await client.disconnect()


async def test_a_resume_while_broadcasts_flow_gets_history_then_live_in_order(hub):
    ids = [(await apublish("old", {"n": n}))["id"] for n in range(30)]
    client = await connect(query="?last_id=0")
    # Live broadcasts arrive while history is being read and written.
    live = [(await apublish("live", {"n": n}))["id"] for n in range(10)]
    got = []
    while len(got) < len(ids) + len(live):
        message = await frame(client)
        if message["type"] != "hub.resumed":
            got.append(message["id"])
    assert got == ids + live
    await client.disconnect()


async def test_a_resume_longer_than_the_slow_client_bound_is_paced_not_cut(hub, settings):
    settings.BROADCAST_MAX_PENDING_BYTES = 64 * 1024
    ids = [(await apublish("big", "x" * 20_000))["id"] for _ in range(10)]
    client = await connect(query="?last_id=0")
    assert [(await frame(client))["id"] for _ in range(10)] == ids
    assert (await frame(client))["type"] == "hub.resumed"
    assert hub.current == 1
    await client.disconnect()


async def test_a_process_emptied_after_a_busy_period_serves_the_next_clients(hub):
    clients = [await connect() for _ in range(5)]
    for n in range(200):
        await get_channel_layer().group_send(
            "broadcast", {"type": "broadcast.message", "id": None, "text": json.dumps(n)}
        )
    for client in clients:
        await client.disconnect()
    late = await asyncio.wait_for(connect(), 2)
    await apublish("after", None, persist=False)
    assert (await frame(late))["type"] == "after"
    await late.disconnect()


async def test_the_last_client_leaving_never_waits_on_a_relay_stuck_in_the_layer(hub, monkeypatch):
    # channels-redis's receive was seen swallowing a cancellation inside redis-py's
    # retry and blocking on: a relay that will not stop must cost nobody anything.
    layer = get_channel_layer()
    real_receive, swallowing = layer.receive, [True]

    async def receive_swallowing_cancellation(channel):
        while True:
            try:
                return await real_receive(channel)
            except asyncio.CancelledError:
                if not swallowing:
                    raise

    monkeypatch.setattr(layer, "receive", receive_swallowing_cancellation)
    clients = [await connect() for _ in range(3)]
    for client in clients:
        await asyncio.wait_for(client.disconnect(), 2)
    late = await asyncio.wait_for(connect(), 2)
    await apublish("after", None, persist=False)
    assert (await frame(late))["type"] == "after"
    await late.disconnect()
    swallowing.clear()  # so that the hub can stop when the test ends


async def test_a_client_registering_while_the_process_joins_gets_the_true_last_id(hub, monkeypatch):
    # Found by the fault sequencer (daphne, seed 3): a client that connected while the
    # process's first client was still reading the last id was welcomed with 0, and
    # every broadcast already sent looked missed to it.
    import time as clock

    def slow_newest_id():
        clock.sleep(0.3)
        return 41

    monkeypatch.setattr("broadcast.stream.relay.newest_id", slow_newest_id)
    first, second = await asyncio.gather(connect(), connect())
    assert first.welcome["payload"] == {"last_id": 41}
    assert second.welcome["payload"] == {"last_id": 41}
    await first.disconnect()
    await second.disconnect()


async def test_a_first_client_is_welcomed_when_joining_fails_and_gets_what_the_relay_missed(
    hub, monkeypatch, caplog
):
    layer = get_channel_layer()
    real_group_add, failures = layer.group_add, []

    async def group_add_failing_once(group, channel):
        if not failures:
            failures.append(channel)
            raise ConnectionError("Connection closed by server.")
        await real_group_add(group, channel)

    monkeypatch.setattr(layer, "group_add", group_add_failing_once)
    monkeypatch.setattr("broadcast.stream.relay.RESTART_FIRST_DELAY", 0.05)
    client = await asyncio.wait_for(connect(), 2)  # welcomed, not closed with 1011
    assert "the relay retries" in caplog.text
    sent = await apublish("news", {"n": 1})
    assert (await frame(client))["id"] == sent["id"]
    assert hub.relay_state == "running"
    await client.disconnect()


async def test_a_relay_back_from_an_outage_retries_a_stale_connection_at_once(
    hub, monkeypatch, caplog
):
    """
    After Redis restarts, the first command on a pooled connection fails. A relay that
    had just rejoined then waited out the backoff its outage had grown (up to 5 s of
    /healthz 503 with Redis back). Found by CI's Redis outage test on a loaded machine.
    """
    layer = get_channel_layer()
    real_receive, stale = layer.receive, ["outage", "stale"]

    async def receive_failing_twice(channel):
        if stale:
            raise ConnectionError(f"Connection closed by server ({stale.pop(0)}).")
        return await real_receive(channel)

    monkeypatch.setattr(layer, "receive", receive_failing_twice)
    monkeypatch.setattr("broadcast.stream.relay.RESTART_FIRST_DELAY", 0.1)
    client = await connect()
    for _ in range(100):  # the two failures, then the relay is back
        if not stale and hub.relay_state == "running":
            break
        await asyncio.sleep(0.02)
    sent = await apublish("news", {"n": 1})
    assert (await asyncio.wait_for(frame(client), 3))["id"] == sent["id"]
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries == [
        "Relay cannot reach the channel layer (Connection closed by server (outage).); "
        "retrying in 0.1s",
        "Relay lost a stale connection (Connection closed by server (stale).); retrying at once",
    ]
    assert hub.relay_state == "running"
    await client.disconnect()


async def test_a_broadcast_arriving_while_the_first_client_joins_is_no_gap_from_zero(
    hub, settings, monkeypatch, caplog
):
    # Found by CI's PostgreSQL leg (the resume-across-topics test): the relay began
    # receiving before the process knew its last id, so a broadcast arriving during
    # that read looked like a gap from 0; with more rows than history holds, the
    # catch-up said hub.reset and moved the position past ids not yet delivered.
    from broadcast.history import newest_id
    from broadcast.publishing.api import publish

    settings.BROADCAST_HISTORY_LIMIT = 5
    for n in range(8):
        await apublish("before", {"n": n})  # no relay yet: history only

    def newest_id_while_a_broadcast_arrives():
        publish("during.join", {"n": 8})
        return newest_id()

    monkeypatch.setattr("broadcast.stream.relay.newest_id", newest_id_while_a_broadcast_arrives)
    client = await connect()
    after = await apublish("after.join", {"n": 9})
    got = [await frame(client) for _ in range(1 + (client.welcome["payload"]["last_id"] < 9))]
    assert got[-1]["id"] == after["id"]
    assert all(f["type"] != "hub.reset" for f in got)
    assert "beyond history" not in caplog.text
    await client.disconnect()


def _sent_but_lost(type_: str, seconds_ago: float) -> int:
    """A row sent as far as the database knows, whose message the layer never delivered."""
    from datetime import timedelta

    from django.utils import timezone

    from broadcast.history import newest_id
    from broadcast.models import Broadcast

    seq = newest_id() + 1
    sent_at = timezone.now() - timedelta(seconds=seconds_ago)
    # bulk_create: no post_save, which would publish it (the admin's path).
    Broadcast.objects.bulk_create(
        [Broadcast(type=type_, payload={}, seq=seq, status=Broadcast.Status.SENT, sent_at=sent_at)]
    )
    return seq


async def test_a_persisted_broadcast_the_layer_lost_with_none_after_it_arrives_on_a_heartbeat(
    hub, settings, caplog
):
    from channels.db import database_sync_to_async

    settings.BROADCAST_HEARTBEAT_SECONDS = 0.2
    client = await connect()
    await apublish("before", {})
    assert (await frame(client))["type"] == "before"
    # Lost in the layer (a pub/sub process not yet subscribed again after Redis
    # restarted), and nothing published after it to reveal the gap.
    lost = await database_sync_to_async(_sent_but_lost)("lost", 2.0)
    got = await frame(client, timeout=3)
    assert (got["type"], got["id"]) == ("lost", lost)
    assert f"Relay missed persisted broadcast(s) {lost}" in caplog.text
    # The live stream goes on after it, in order.
    await apublish("after", {})
    got = await frame(client)
    assert (got["type"], got["id"]) == ("after", lost + 1)
    await client.disconnect()


def count_beats(monkeypatch, fail_at=None):
    """The heartbeat's count-row writes, counted; beat number ``fail_at`` fails after its write."""
    from django.db import OperationalError
    from django.utils import timezone

    from broadcast.stream.counts import Counts

    beats = []
    write_now = Counts.write_now

    def counted(counts, *args):
        beats.append(timezone.now())
        write_now(counts, *args)
        if len(beats) == fail_at:
            raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(Counts, "write_now", counted)
    return beats


def count_connections(opened):
    """Record the thread of each database connection opened, until disconnected."""
    from django.db.backends.signals import connection_created

    connection_created.connect(
        lambda **kwargs: opened.append(threading.current_thread().name),
        weak=False, dispatch_uid="count_connections",
    )  # fmt: skip
    return lambda: connection_created.disconnect(dispatch_uid="count_connections")


async def test_an_idle_process_keeps_one_database_connection_for_its_heartbeats(
    hub, settings, monkeypatch
):
    from broadcast.stream.lost import LOST_AFTER_SECONDS

    settings.BROADCAST_HEARTBEAT_SECONDS = 0.2
    client = await connect()
    # Idle long enough that each heartbeat also looks for broadcasts the layer lost.
    await asyncio.sleep(LOST_AFTER_SECONDS + 0.3)
    opened = []
    beats = count_beats(monkeypatch)
    stop_counting = count_connections(opened)
    try:
        await asyncio.sleep(2.0)
    finally:
        stop_counting()
    # Neither the count row nor the look for lost broadcasts opens a connection of its
    # own (on SQLite, each close of the last one checkpoints the write-ahead log).
    assert len(beats) >= 4
    assert opened == []
    await client.disconnect()


async def test_a_heartbeat_that_failed_reconnects_and_writes_the_row_on_the_next(
    hub, settings, monkeypatch, caplog
):
    from broadcast.models import HubProcess

    settings.BROADCAST_HEARTBEAT_SECONDS = 0.2
    beats = count_beats(monkeypatch, fail_at=2)
    opened = []
    stop_counting = count_connections(opened)
    try:
        client = await connect()
        await asyncio.sleep(1.2)
    finally:
        stop_counting()
    assert "Could not write the connection-count row: server closed the connection" in caplog.text
    assert "Traceback" not in caplog.text
    assert len(beats) >= 4
    # Its connection, dropped after the failure: one for the first beat, one after.
    assert len([name for name in opened if name.startswith("broadcast-database")]) == 2
    process = await HubProcess.objects.aget(pk=hub.counts.row_id)
    assert process.last_heartbeat > beats[1]  # written after the failed beat
    await client.disconnect()


async def test_a_broadcast_just_sent_is_left_to_the_layer(hub, settings):
    from channels.db import database_sync_to_async

    from broadcast.stream.lost import LOST_AFTER_SECONDS

    settings.BROADCAST_HEARTBEAT_SECONDS = 0.2
    client = await connect()
    await asyncio.sleep(LOST_AFTER_SECONDS + 0.2)  # the relay has idled long enough to look
    # Sent a moment ago: the layer may still be carrying it, and the heartbeats leave it.
    await database_sync_to_async(_sent_but_lost)("in.flight", 0.0)
    assert await client.receive_nothing(timeout=LOST_AFTER_SECONDS / 2)
    await client.disconnect()
