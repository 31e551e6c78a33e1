"""The publish path: validation, persistence, commit timing, failures, order."""

import asyncio
import gc
import io
import json
import threading

import pytest
from channels.layers import channel_layers, get_channel_layer
from django.core.management import call_command
from django.db import connection, transaction

from broadcast import InvalidType, PayloadTooLarge, PublishFailed, publish
from broadcast.models import Broadcast
from broadcast.publishing.api import resend
from broadcast.signals import broadcast_requested
from tests.conftest import redis_layers

pytestmark = pytest.mark.django_db(transaction=True)


class Observer:
    """
    A real member of the broadcast group on the Redis layer, like a server's relay,
    running on a loop of its own so that sync tests can publish while it listens.
    """

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.layer = get_channel_layer()
        self.channel = self._run(self._join())

    def _run(self, coroutine, timeout=10):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _join(self):
        channel = await self.layer.new_channel()
        await self.layer.group_add("broadcast", channel)
        return channel

    def take(self, count, timeout=5.0):
        async def receive():
            return [
                await asyncio.wait_for(self.layer.receive(self.channel), timeout)
                for _ in range(count)
            ]

        return self._run(receive(), timeout * count + 5)

    def nothing(self, wait=0.3):
        async def receive():
            try:
                await asyncio.wait_for(self.layer.receive(self.channel), wait)
            except TimeoutError:
                return True
            return False

        return self._run(receive())

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def observer(redis_layer):
    instance = Observer()
    yield instance
    instance.close()


def test_publish_persists_sends_and_returns_the_envelope(observer):
    envelope = publish("announcement", {"text": "hi"})
    row = Broadcast.objects.get()
    assert row.status == Broadcast.Status.SENT
    assert envelope["id"] == row.seq
    assert envelope["payload"] == {"text": "hi"}
    (message,) = observer.take(1)
    assert message["type"] == "broadcast.message"
    assert json.loads(message["text"]) == envelope


def test_ids_increase_with_each_publish(observer):
    ids = [publish("tick", n)["id"] for n in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [m["id"] for m in observer.take(5)] == ids


def test_inside_a_transaction_the_send_waits_for_the_commit(observer):
    with transaction.atomic():
        envelope = publish("later", {})
        assert envelope["id"] is None
        assert observer.nothing()
    (message,) = observer.take(1)
    assert envelope["id"] == message["id"] == Broadcast.objects.get().seq


def test_a_rolled_back_publish_sends_nothing_and_leaves_no_row(observer):
    with pytest.raises(RuntimeError), transaction.atomic():
        publish("never", {})
        raise RuntimeError("roll back")
    assert observer.nothing()
    assert not Broadcast.objects.exists()


def test_invalid_input_leaves_no_row_and_sends_nothing(observer):
    with pytest.raises(InvalidType):
        publish("hub.fake", {})
    with pytest.raises(PayloadTooLarge):
        publish("big", "x" * 70_000)
    assert not Broadcast.objects.exists()
    assert observer.nothing()


def test_an_unreachable_layer_raises_and_marks_the_row_failed(unreachable_layer):
    with pytest.raises(PublishFailed, match="marked failed.*ConnectionError"):
        publish("lost", {"n": 1})
    row = Broadcast.objects.get()
    assert row.status == Broadcast.Status.FAILED
    assert "Connection" in row.error


def test_an_unreachable_layer_raises_for_ephemeral_broadcasts_too(settings):
    settings.CHANNEL_LAYERS = redis_layers("redis://127.0.0.1:1/0")
    channel_layers.backends.clear()
    with pytest.raises(PublishFailed, match="Could not reach the channel layer"):
        publish("lost", {}, persist=False)
    assert not Broadcast.objects.exists()


def test_a_failed_row_is_resent_in_place(settings, redis_url):
    settings.CHANNEL_LAYERS = redis_layers("redis://127.0.0.1:1/0")
    channel_layers.backends.clear()
    with pytest.raises(PublishFailed):
        publish("retry", {"n": 1})
    settings.CHANNEL_LAYERS = redis_layers(redis_url)
    channel_layers.backends.clear()
    observer = Observer()
    row = Broadcast.objects.get()
    envelope = resend(row)
    row.refresh_from_db()
    assert row.status == Broadcast.Status.SENT and row.error == ""
    assert envelope["id"] == row.seq == observer.take(1)[0]["id"]
    observer.close()
    assert Broadcast.objects.count() == 1


def test_a_sent_row_is_resent_as_a_new_broadcast(observer):
    first = publish("again", {"n": 1})
    row = Broadcast.objects.get()
    second = resend(row)
    assert second["id"] > first["id"]
    assert Broadcast.objects.count() == 2
    assert [m["id"] for m in observer.take(2)] == [first["id"], second["id"]]


def test_the_broadcast_requested_signal_publishes(observer):
    broadcast_requested.send(sender=None, type="from.signal", payload={"ok": True})
    row = Broadcast.objects.get()
    assert (row.type, row.payload, row.status) == ("from.signal", {"ok": True}, "sent")
    assert observer.take(1)[0]["id"] == row.seq


def test_the_signal_raises_errors_to_the_sender(observer):
    with pytest.raises(InvalidType):
        broadcast_requested.send(sender=None, type="bad type", payload=None)


def test_concurrent_publishers_deliver_in_id_order(observer):
    """Ids are assigned at send time under the send lock, so no id overtakes another."""
    errors = []

    def publisher(number):
        try:
            for n in range(10):
                publish("race", {"publisher": number, "n": n})
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    delivered = [message["id"] for message in observer.take(40)]
    assert delivered == sorted(delivered)
    assert delivered == list(Broadcast.objects.order_by("seq").values_list("seq", flat=True))


def test_the_send_lock_is_shared_through_redis_on_the_pubsub_layer_too(settings, redis_url):
    from broadcast.publishing.sendlock import redis_client

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": redis_url}]},
        }
    }
    channel_layers.backends.clear()
    client = redis_client(get_channel_layer())
    assert client is not None
    assert client.connection_pool.connection_kwargs["db"] == int(redis_url.rsplit("/", 1)[1])
    publish("via.pubsub", {"ok": True})
    assert Broadcast.objects.get().status == Broadcast.Status.SENT
    # Ephemeral ones from sync code: each call runs on an event loop of its own, and
    # what the pipelined publish keeps for that loop goes with it.
    from broadcast.seams.layers import pubsub

    gc.collect()
    kept = len(pubsub._outgoing)
    for _ in range(5):
        assert publish("via.pubsub", {"ok": True}, persist=False)["id"] is None
    gc.collect()
    assert len(pubsub._outgoing) <= kept  # (an earlier test's loop may have gone too)


def test_every_publish_of_a_transaction_is_failed_not_pending_when_the_layer_is_down(
    unreachable_layer, caplog
):
    with transaction.atomic():
        for n in range(3):
            publish("batch", {"n": n})
    statuses = list(Broadcast.objects.order_by("pk").values_list("status", flat=True))
    assert statuses == [Broadcast.Status.FAILED] * 3
    assert list(Broadcast.objects.unsent().order_by("pk")) == list(Broadcast.objects.order_by("pk"))
    # A WARNING line each, and no stack: an expected failure while the layer is down.
    warnings = [r for r in caplog.records if r.levelname != "INFO"]
    assert [r.levelname for r in warnings] == ["WARNING"] * 3
    assert not [r for r in caplog.records if r.exc_info]


def test_resend_failed_also_takes_pending_rows_a_dead_publisher_left(observer):
    from django.utils import timezone

    def saved_by_a_publisher_that_died(type, minutes_ago):
        row = Broadcast(
            type=type, created_at=timezone.now() - timezone.timedelta(minutes=minutes_ago)
        )
        row.sent_by_publish = True  # as publish() saves it, before its on-commit send
        row.save()

    saved_by_a_publisher_that_died("orphan", 5)
    saved_by_a_publisher_that_died("in.flight", 0)  # its publisher may still send it
    call_command("broadcast", "--resend-failed", stdout=io.StringIO())
    (message,) = observer.take(1)
    assert json.loads(message["text"])["type"] == "orphan"
    assert observer.nothing()


def test_resending_a_row_whose_id_was_burnt_leaves_no_hole_in_history(observer):
    from broadcast.history import replay_plan

    first = publish("a", 1)
    burnt = publish("b", 2)
    Broadcast.objects.filter(seq=burnt["id"]).update(status=Broadcast.Status.FAILED)
    row = Broadcast.objects.get(seq=burnt["id"])
    again = resend(row)
    row.refresh_from_db()
    assert row.status == Broadcast.Status.RESENT and row.seq == burnt["id"]
    assert again["id"] > burnt["id"]
    # A client that saw the first id resumes across the burnt one without a reset.
    assert replay_plan(first["id"], again["id"]) == [again["id"]]
    assert [m["id"] for m in observer.take(3)] == [first["id"], burnt["id"], again["id"]]
    out = io.StringIO()
    call_command("broadcast", "--resend-failed", stdout=out)
    assert "No failed broadcasts to resend." in out.getvalue()


def test_a_send_lock_lost_in_redis_says_where_it_went(redis_layer):
    import redis

    from broadcast.publishing.sendlock import LOCK_NAME, SendLockLost, send_lock

    admin = redis.Redis.from_url(redis_layer)
    for meddle, where in [
        (lambda: admin.delete(LOCK_NAME), "no longer in Redis"),
        (lambda: admin.set(LOCK_NAME, "another", px=5000), "held by another publisher"),
    ]:
        with send_lock(get_channel_layer()) as held:
            meddle()
            with pytest.raises(SendLockLost, match=f"expired in Redis .*{where}.* after it was"):
                held.check()
        admin.delete(LOCK_NAME)


@pytest.mark.slow
def test_a_publisher_stalled_under_the_lock_fails_undelivered_and_the_next_proceeds(
    observer, redis_url, monkeypatch
):
    import time

    import redis

    from broadcast.publishing import send as publishing
    from broadcast.publishing import sendlock

    first = publish("before", 1)
    monkeypatch.setattr(sendlock, "LOCK_EXPIRY_SECONDS", 3.0)
    admin = redis.Redis.from_url(redis_url)
    real_wait = publishing.wait_for_relays

    def pause_redis_then_wait(layer, budget=None):
        admin.execute_command("CLIENT", "PAUSE", 4000, "WRITE")  # a stall, with the lock held
        real_wait(layer, budget)

    monkeypatch.setattr(publishing, "wait_for_relays", pause_redis_then_wait)
    paused = time.monotonic()
    with pytest.raises(PublishFailed):
        publish("stalled", 2)
    monkeypatch.setattr(publishing, "wait_for_relays", real_wait)
    stalled = Broadcast.objects.get(type="stalled")
    assert stalled.status == Broadcast.Status.FAILED
    time.sleep(max(0.0, 4.5 - (time.monotonic() - paused)))  # until the pause is over
    after = publish("after", 3)
    assert after["id"] > stalled.seq
    # Failed means not delivered: the stalled send never reached the group.
    assert [m["id"] for m in observer.take(2, timeout=10)] == [first["id"], after["id"]]
    assert observer.nothing()


@pytest.mark.slow
def test_a_publisher_killed_holding_the_lock_delays_the_next_only_until_it_expires(
    observer, redis_url
):
    import os
    import signal
    import subprocess
    import sys
    import time

    from broadcast.publishing.sendlock import LOCK_EXPIRY_SECONDS
    from tests.e2e.conftest import ROOT

    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import django, time; django.setup()\n"
            "from broadcast.stream.layer import load_layer\n"
            "from broadcast.publishing.sendlock import send_lock\n"
            "with send_lock(load_layer()):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n"
        )],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "hubsite.settings", "REDIS_URL": redis_url},
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    sent = publish("next", 1)
    waited = time.monotonic() - started
    assert LOCK_EXPIRY_SECONDS - 3 < waited < LOCK_EXPIRY_SECONDS + 1
    assert [m["id"] for m in observer.take(1)] == [sent["id"]]
