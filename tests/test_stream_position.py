"""
The stream position, which the relay alone moves: never past an id that was not fanned
out, burnt, or named by a hub.reset; held at a gap the database cannot fill yet.
"""

import json

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import OperationalError

from broadcast import apublish
from broadcast.group import relay_message
from broadcast.history import newest_id, replay_after
from broadcast.stream.position import SkippedId
from broadcast.stream.relay import Relay

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    """The hub as the relay sees it: what it is handed to write, in order."""

    def __init__(self):
        self.delivered = []
        self.rechecks = 0  # authenticated connections sent back to be judged again

    def fan_out(self, message):
        self.fan_out_batch([message])

    def fan_out_batch(self, messages):
        self.delivered.extend(messages)

    def recheck_owners(self):
        self.rechecks += 1
        return 0

    def note_revoked(self, owner, when=None):
        pass


async def persisted(count):
    """Group messages for ``count`` new persisted broadcasts, by id."""
    from channels.db import database_sync_to_async

    for n in range(count):
        await apublish("p", {"n": n})  # nobody listens on this layer's group
    rows = await database_sync_to_async(replay_after)(0, await database_sync_to_async(newest_id)())
    return {row.id: relay_message(row.text, row.id, row.topic) for row in rows}


def failing_history(monkeypatch, failures):
    """History reads fail ``failures`` times (the database is away), then work."""
    real, calls = replay_after, []

    def read(*args):
        calls.append(args)
        if len(calls) <= failures:
            raise OperationalError("server closed the connection unexpectedly")
        return real(*args)

    monkeypatch.setattr("broadcast.stream.position.replay_after", read)
    return calls


async def test_a_gap_inside_a_batch_is_filled_in_place_and_the_rest_follows(caplog):
    messages = await persisted(8)
    hub = Recorder()
    relay = Relay(get_channel_layer(), "unused", hub)
    relay.position = 3
    # The layer lost id 5, and the relay took 4, 6, 7 and 8 at once: 4 goes out, then
    # history from 5 (which already holds 6-8), then the batch's live copies, skipped.
    await relay._deliver([messages[4], messages[6], messages[7], messages[8]])
    assert [m["id"] for m in hub.delivered] == [4, 5, 6, 7, 8]
    assert "missed persisted broadcast(s) 5 in the channel layer" in caplog.text


async def test_a_gap_held_while_history_fails_is_filled_once_it_answers(monkeypatch, caplog):
    messages = await persisted(6)
    monkeypatch.setattr("broadcast.stream.position.HOLD_FIRST_DELAY", 0.01)
    calls = failing_history(monkeypatch, 3)
    hub = Recorder()
    relay = Relay(get_channel_layer(), "unused", hub)
    relay.position = 3
    await relay._deliver([messages[4], messages[6]])  # 5 was lost in the layer
    assert [m["id"] for m in hub.delivered] == [4, 5, 6]
    assert len(calls) == 4 and relay.position == 6 and relay.holding_since is None
    assert "holding the stream and retrying" in caplog.text


async def test_a_gap_held_past_the_bound_is_reset_never_skipped_silently(monkeypatch, caplog):
    messages = await persisted(6)
    monkeypatch.setattr("broadcast.stream.position.HOLD_SECONDS", 0.2)
    monkeypatch.setattr("broadcast.stream.position.HOLD_FIRST_DELAY", 0.01)
    failing_history(monkeypatch, 10_000)
    hub = Recorder()
    relay = Relay(get_channel_layer(), "unused", hub)
    relay.position = 3
    await relay._deliver([messages[4], messages[6]])
    four, reset, six = hub.delivered
    assert (four["id"], six["id"]) == (4, 6)
    frame = json.loads(reset["text"])
    assert frame["type"] == "hub.reset" and frame["payload"] == {"last_id": 5, "from": 4}
    assert hub.rechecks == 1  # a revocation among the skipped ids would be unknown
    assert relay.position == 6 and relay.holding_since is None
    assert "could not read ids 5 to 5 from the database" in caplog.text


async def test_the_position_never_moves_past_an_id_nobody_accounted_for():
    relay = Relay(get_channel_layer(), "unused", Recorder())
    relay.position = 3
    assert relay._advance(4) and relay.position == 4
    assert not relay._advance(4), "an id already sent is a duplicate"
    with pytest.raises(SkippedId):
        relay._advance(6)
    assert relay.position == 4
    assert relay._advance(6, accounted=True) and relay.position == 6


async def test_a_fan_out_that_fails_puts_the_position_back_for_the_catch_up():
    messages = await persisted(2)

    class Failing(Recorder):
        def fan_out_batch(self, messages):
            raise RuntimeError("a bug in the fan-out")

    relay = Relay(get_channel_layer(), "unused", Failing())
    with pytest.raises(RuntimeError):
        await relay._deliver([messages[1], messages[2]])
    assert relay.position == 0


async def test_a_catch_up_whose_fan_out_fails_leaves_the_position_before_what_it_did_not_send():
    messages = await persisted(3)

    class FailsOnTwo(Recorder):
        def fan_out_batch(self, batch):
            if any(message["id"] == 2 for message in batch):
                raise RuntimeError("a bug in the fan-out")
            super().fan_out_batch(batch)

    hub = FailsOnTwo()
    relay = Relay(get_channel_layer(), "unused", hub)
    with pytest.raises(RuntimeError):
        await relay._deliver([messages[3]])  # 1 and 2 lost: the catch-up sends 1, fails on 2
    assert [m["id"] for m in hub.delivered] == [1]
    assert relay.position == 1


async def test_during_a_sweep_the_settled_position_is_the_one_every_client_was_written():
    messages = await persisted(3)
    seen = []

    class Sweeping(Recorder):
        async def sweep(self, batch, take, limit):
            seen.append((relay.position, relay.settled))
            self.fan_out_batch(batch)

    relay = Relay(get_channel_layer(), "unused", Sweeping())
    await relay._deliver([messages[1], messages[2], messages[3]], sweep_limit=64)
    # A pong names the settled position: a client in a chunk not yet written has 0.
    assert seen == [(3, 0)]
    assert relay.settled == relay.position == 3


async def test_history_replays_a_broadcast_larger_than_a_limit_lowered_since(settings):
    from broadcast.history import envelope_texts

    messages = await persisted(1)
    settings.BROADCAST_MAX_MESSAGE_BYTES = 10
    (replayed,) = await database_sync_to_async(envelope_texts)([1])
    assert replayed.text == messages[1]["text"]


class Connection:
    """A client of the fan-out as the fan-out sees it: what it is pushed, and its end."""

    def __init__(self):
        self.pushed, self.closed, self.ended = [], False, None

    def push(self, outgoing):
        if not self.closed:
            self.pushed.extend(part.id for part in outgoing.parts or [outgoing])

    def end(self, code, reason):
        self.closed, self.ended = True, (code, reason)


async def test_a_revocation_lost_in_the_layer_is_caught_up_before_what_follows_it():
    from django.contrib.auth.models import User

    from broadcast.publishing.revocation import adisconnect_user
    from broadcast.stream.fanout import FanOut

    alice = await User.objects.acreate_user("alice")
    await apublish("before", 1)
    revocation = await adisconnect_user(alice)
    after = await apublish("after", 2)
    messages = {
        row.id: relay_message(row.text, row.id, row.topic)
        for row in await database_sync_to_async(replay_after)(0, after["id"])
    }
    hub = FanOut()
    theirs, other = Connection(), Connection()
    hub.add(theirs, str(alice.pk))
    hub.add(other)
    relay = Relay(get_channel_layer(), "unused", hub)
    relay.position = revocation["id"] - 1
    await relay._deliver([messages[after["id"]]])  # the revocation was lost in the layer
    assert theirs.ended == (4003, "access revoked") and theirs.pushed == []
    assert other.pushed == [after["id"]] and relay.position == after["id"]
