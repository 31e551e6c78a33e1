"""
Recent history: what the relay fanned out, kept in memory, answers resumes without the
database; it answers only for ids it holds completely, and leaves the rest (and every
hub.reset) to the database.
"""

import asyncio
import time

import pytest
from channels.layers import get_channel_layer
from prometheus_client import REGISTRY

from broadcast import apublish
from broadcast.history import Replayed
from broadcast.models import Broadcast
from broadcast.stream.recent import Recent
from broadcast.stream.relay import Relay
from tests.clients import connect, frame
from tests.test_stream_position import Recorder, persisted


def ids(replayed):
    return None if replayed is None else [one.id for one in replayed]


def filled(recent, first, last, topic_of=lambda msg_id: None):
    for msg_id in range(first, last + 1):
        recent.sent(msg_id, f'{{"id":{msg_id}}}', topic_of(msg_id))


def test_it_answers_for_the_global_stream_and_the_clients_topics_only():
    recent = Recent()
    recent.skipped(10)  # the relay started at 10: what came before is the database's
    filled(recent, 11, 16, {12: "a", 13: "b", 14: "hub.revoke"}.get)
    assert ids(recent.replay(10, 16, {"a"})) == [11, 12, 15, 16]
    assert ids(recent.replay(12, 15)) == [15]
    assert ids(recent.replay(16, 16)) == []
    assert recent.replay(9, 16) is None, "from before the relay started"
    assert recent.replay(10, 17) is None, "past what the relay has seen"


def test_burnt_ids_keep_it_complete_and_a_reset_breaks_it():
    recent = Recent()
    filled(recent, 1, 2)
    recent.burnt(4)  # 3 and 4 were never sent (history said so)
    filled(recent, 5, 5)
    assert ids(recent.replay(1, 5)) == [2, 5]
    recent.skipped(9)  # hub.reset for 6-9: those were never held
    filled(recent, 10, 10)
    assert recent.replay(5, 10) is None, "the reset's ids are the database's to judge"
    assert ids(recent.replay(9, 10)) == [10]


def test_it_is_bounded_by_count_and_by_bytes_oldest_first():
    recent = Recent(broadcasts=3, size=10_000)
    filled(recent, 1, 5)
    assert (recent.floor, recent.newest) == (2, 5)
    assert recent.replay(1, 5) is None and ids(recent.replay(2, 5)) == [3, 4, 5]

    recent = Recent(broadcasts=100, size=25)
    for msg_id in range(1, 5):
        recent.sent(msg_id, "x" * 10, None)
    assert ids(recent.replay(recent.floor, 4)) == [3, 4]


def test_a_position_put_back_forgets_what_it_passed_and_takes_it_again():
    recent = Recent()
    filled(recent, 1, 5)
    recent.put_back(3)  # the fan-out of 4-5 failed; the catch-up sends them again
    assert recent.replay(1, 5) is None
    filled(recent, 4, 5)
    assert ids(recent.replay(1, 5)) == [2, 3, 4, 5]


def test_beyond_the_history_limit_or_ttl_the_database_answers(settings):
    recent = Recent()
    filled(recent, 1, 5)
    settings.BROADCAST_HISTORY_LIMIT = 3
    assert recent.replay(1, 5) is None and ids(recent.replay(2, 5)) == [3, 4, 5]
    settings.BROADCAST_HISTORY_TTL = 0.05
    time.sleep(0.1)
    assert recent.replay(2, 5) is None


# Through the relay: each way the position moves is recorded --------------------


@pytest.mark.django_db(transaction=True)
async def test_ids_the_relay_filled_from_the_database_are_held_and_a_reset_is_not():
    messages = await persisted(12)
    relay = Relay(get_channel_layer(), "unused", Recorder())
    relay.position = 3
    relay.recent.skipped(3)
    # 5 was lost in the layer: the gap's history (4 on) is fanned out, and held.
    await relay._deliver([messages[4], messages[6]])
    assert relay.position == 12 and ids(relay.recent.replay(3, 12)) == list(range(4, 13))

    relay = Relay(get_channel_layer(), "unused", Recorder())
    relay.position = 3
    relay.recent.skipped(3)
    await Broadcast.objects.filter(seq=5).adelete()  # gone from history too: hub.reset
    await relay._deliver([messages[4], messages[6]])
    assert relay.recent.replay(3, 6) is None
    assert ids(relay.recent.replay(5, 6)) == [6]


@pytest.mark.django_db(transaction=True)
async def test_a_resume_within_recent_history_is_served_with_the_rows_gone(hub):
    def resumes(source):
        return REGISTRY.get_sample_value("broadcast_resumes_total", {"source": source}) or 0

    bystander = await connect()  # the relay runs: it sees what follows
    sent = [(await apublish("news", {"n": n}, topic=topic))["id"] for n, topic in
            enumerate([None, "t", None, "u", None])]  # fmt: skip
    assert [(await frame(bystander))["id"] for _ in range(3)] == sent[::2]  # relayed
    # Only memory still has them: the database's answer would be hub.reset.
    await Broadcast.objects.filter(seq__in=sent[1:4]).adelete()
    memory, database = resumes("memory"), resumes("database")
    client = await connect(query=f"?last_id={sent[0]}&topics=t")
    await frame(client)  # hub.subscribed
    assert [(await frame(client))["id"] for _ in range(3)] == [sent[1], sent[2], sent[4]]
    resumed = await frame(client)
    assert resumed["type"] == "hub.resumed"
    assert resumed["payload"] == {"from": sent[0], "count": 3, "last_id": sent[4]}
    assert (resumes("memory"), resumes("database")) == (memory + 1, database)
    (live,) = [(await apublish("news", {"n": "live"}))["id"]]
    assert (await frame(client))["id"] == live
    assert await client.receive_nothing(timeout=0.1)
    await client.disconnect()
    await bystander.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_resume_from_beyond_the_stream_is_reset_and_never_given_an_id_the_reset_named(
    hub,
):
    """
    Found by the fault sequencer: a resume from an id this hub never issued waited for
    the relay, which passed a live broadcast meanwhile; the reset then named that id,
    and the client got it after all, held since it registered.
    """
    bystander = await connect()
    (first,) = [(await apublish("news", {"n": 0}))["id"]]
    await frame(bystander)
    client = await connect(query=f"?last_id={first + 1000}")
    (live,) = [(await apublish("news", {"n": 1}))["id"]]  # while the resume looks
    reset = await frame(client)
    assert reset["type"] == "hub.reset", reset
    got = await frame(client)
    assert got["id"] == live and live > reset["payload"]["last_id"], (reset, got)
    assert await client.receive_nothing(timeout=0.2)
    await client.disconnect()
    await bystander.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_resume_a_step_ahead_of_this_relay_gets_what_follows_once_it_arrives(hub):
    """A client moved from a process whose relay had one broadcast more than this one."""
    from django.utils import timezone

    bystander = await connect()
    (first,) = [(await apublish("news", {"n": 0}))["id"]]
    await frame(bystander)
    # Committed and sent by a publisher this relay has not heard from yet.
    await Broadcast.objects.acreate(
        type="news", payload={"n": 1}, seq=first + 1, sent_at=timezone.now()
    )
    client = await connect(query=f"?last_id={first + 1}")
    assert client.welcome["payload"]["last_id"] == first
    (after,) = [(await apublish("news", {"n": 2}))["id"]]  # the relay fills first + 1
    resumed = await frame(client)
    assert (resumed["type"], resumed["payload"]) == (
        "hub.resumed", {"from": first + 1, "count": 0, "last_id": first + 1},
    )  # fmt: skip
    assert (await frame(client))["id"] == after  # not first + 1, which it had
    assert await client.receive_nothing(timeout=0.2)
    await client.disconnect()
    await bystander.disconnect()


def test_history_read_from_the_database_is_held_before_the_rest_if_it_still_fits():
    def older(first, last):
        return [(Replayed(i, f'{{"id":{i}}}', None), time.time()) for i in range(first, last + 1)]

    recent = Recent(broadcasts=6)
    recent.skipped(5)
    filled(recent, 6, 8)
    assert not recent.prepend(older(2, 5), 1, 4), "read for a floor it no longer has"
    assert not recent.prepend(older(1, 5), 0, 5), "over the bound: the database answers"
    assert recent.prepend(older(3, 5), 2, 5)
    assert ids(recent.replay(2, 8)) == [3, 4, 5, 6, 7, 8]


@pytest.mark.django_db(transaction=True)
async def test_a_storm_of_resumes_from_before_the_relay_started_shares_one_database_read(
    hub, monkeypatch
):
    from broadcast import history

    reads = []

    def counted(*args):
        reads.append(args)
        return history.window(*args)

    monkeypatch.setattr("broadcast.stream.recent.window", counted)
    sent = [(await apublish("news", {"n": n}))["id"] for n in range(5)]  # no relay yet
    clients = await asyncio.gather(*(connect(query=f"?last_id={sent[0]}") for _ in range(40)))
    for client in clients:
        assert [(await frame(client))["id"] for _ in range(4)] == sent[1:]
        assert (await frame(client))["type"] == "hub.resumed"
    older = await connect(query="?last_id=0")
    assert [(await frame(older))["id"] for _ in range(5)] == sent
    assert reads == [(sent[0], sent[-1]), (0, sent[0])]
    for client in [*clients, older]:
        await client.disconnect()


async def test_a_wait_for_the_relay_ends_when_it_moves_there_or_at_its_bound():
    recent = Recent()
    filled(recent, 1, 3)
    waiting = asyncio.ensure_future(recent.reached(5, 2.0))
    await asyncio.sleep(0.05)
    recent.moved(4, None)  # burnt: not there yet
    await asyncio.sleep(0.05)
    assert not waiting.done()
    recent.moved(5, {"text": '{"id":5}', "topic": None})
    assert await asyncio.wait_for(waiting, 0.5)
    assert not await recent.reached(9, 0.05)
    assert not recent._waiters, "a wait that ended leaves nothing behind"


async def test_it_reads_nothing_back_that_it_could_not_hold_or_replay(settings):
    recent = Recent(broadcasts=5)
    recent.skipped(20)
    filled(recent, 21, 23)
    assert not await recent.reach_back(17), "3 held + 3 lacking is over the bound of 5"
    recent = Recent(broadcasts=100)
    recent.skipped(20)
    settings.BROADCAST_HISTORY_LIMIT = 2
    assert not await recent.reach_back(17), "over the history limit: hub.reset's case"
    assert recent.floor == 20
