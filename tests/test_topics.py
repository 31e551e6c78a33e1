"""Topics, per-user streams and connect tokens at the consumer (channels.testing)."""

import json
import threading

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from broadcast import InvalidTopic, apublish, apublish_to_user, publish
from broadcast.clients.authorizer import default_authorizer
from broadcast.clients.consumer import BroadcastConsumer
from broadcast.clients.tokens import InvalidToken, connect_token, read_token
from broadcast.routing import AllowedOrigins, SessionIfAuthRequired
from tests.clients import PATH, connect, frame

pytestmark = pytest.mark.django_db(transaction=True)

# Who the test authorizer was asked about, to pin that it is asked once per topic.
ASKED: list[tuple[str, str]] = []


THREADS: list[str] = []


def only_public(user, topic):
    ASKED.append((str(user), topic))
    THREADS.append(threading.current_thread().name)
    return topic.startswith("public.")


def failing(user, topic):
    raise RuntimeError("the authorizer's database is down")


async def subscribe(client, *topics, kind="hub.subscribe"):
    await client.send_to(text_data=json.dumps({"type": kind, "topics": list(topics)}))
    return await frame(client)


async def test_a_topic_broadcast_reaches_only_its_subscribers(hub):
    news = await connect(query="?topics=news")
    assert (await frame(news))["payload"] == {"topics": ["news"], "denied": []}
    sport = await connect(query="?topics=sport")
    await frame(sport)
    everyone = await connect()
    sent = await apublish("headline", {"n": 1}, topic="news")
    got = await frame(news)
    assert (got["id"], got["topic"], got["payload"]) == (sent["id"], "news", {"n": 1})
    assert await sport.receive_nothing(timeout=0.1)
    assert await everyone.receive_nothing(timeout=0.1)
    # The global stream still reaches every client, subscribed or not.
    sent = await apublish("banner", {"n": 2})
    for client in (news, sport, everyone):
        assert (await frame(client))["id"] == sent["id"]
    for client in (news, sport, everyone):
        await client.disconnect()


async def test_subscribe_and_unsubscribe_take_effect_from_their_answer(hub):
    client = await connect()
    answer = await subscribe(client, "a", "b", "a")
    assert answer["type"] == "hub.subscribed"
    assert answer["payload"] == {"topics": ["a", "b"], "denied": []}
    sent = await apublish("x", topic="b")
    assert (await frame(client))["id"] == sent["id"]
    answer = await subscribe(client, "b", kind="hub.unsubscribe")
    assert (answer["type"], answer["payload"]) == ("hub.unsubscribed", {"topics": ["b"]})
    await apublish("x", topic="b")
    assert await client.receive_nothing(timeout=0.1)
    assert hub.topic_counts() == {"a": 1}
    await client.disconnect()
    assert hub.topic_counts() == {}


async def test_malformed_topic_names_are_answered_with_hub_error(hub):
    client = await connect()
    await client.send_to(text_data=json.dumps({"type": "hub.subscribe", "topics": "a,b"}))
    error = await frame(client)
    assert error["type"] == "hub.error" and "list" in error["payload"]["error"]
    assert (await frame(client))["payload"] == {"topics": [], "denied": []}
    await client.send_to(text_data=json.dumps({"type": "hub.subscribe", "topics": ["ok", "a b"]}))
    assert (await frame(client))["type"] == "hub.error"
    assert (await frame(client))["payload"] == {"topics": ["ok"], "denied": []}
    await client.disconnect()


async def test_more_topics_than_allowed_are_denied(hub, settings):
    settings.BROADCAST_MAX_TOPICS_PER_CLIENT = 2
    client = await connect(query="?topics=a,b,c")
    assert (await frame(client))["payload"] == {"topics": ["a", "b"], "denied": ["c"]}
    error = await frame(client)
    assert "BROADCAST_MAX_TOPICS_PER_CLIENT" in error["payload"]["error"]
    # Already subscribed ones do not count twice.
    assert (await subscribe(client, "a", "d"))["type"] == "hub.error"
    assert (await frame(client))["payload"] == {"topics": ["a"], "denied": ["d"]}
    await client.disconnect()


async def test_the_authorizer_decides_once_per_topic_and_connection(hub, settings):
    settings.BROADCAST_TOPIC_AUTHORIZER = "tests.test_topics.only_public"
    ASKED.clear()
    THREADS.clear()
    client = await connect(query="?topics=public.a,secret")
    assert (await frame(client))["payload"] == {"topics": ["public.a"], "denied": ["secret"]}
    await subscribe(client, "public.a", kind="hub.unsubscribe")
    assert (await subscribe(client, "public.a", "secret"))["payload"] == {
        "topics": ["public.a"],
        "denied": ["secret"],
    }
    for _ in range(3):
        await apublish("x", topic="public.a")
        await frame(client)
    assert ASKED == [("AnonymousUser", "public.a"), ("AnonymousUser", "secret")]
    # A custom authorizer may query the database: it never runs on the event loop.
    assert threading.main_thread().name not in THREADS
    await client.disconnect()


async def test_an_authorizer_that_fails_denies_and_is_logged(hub, settings, caplog):
    settings.BROADCAST_TOPIC_AUTHORIZER = "tests.test_topics.failing"
    client = await connect(query="?topics=a")
    assert (await frame(client))["payload"] == {"topics": [], "denied": ["a"]}
    assert "BROADCAST_TOPIC_AUTHORIZER failed on topic 'a'" in caplog.text
    await client.disconnect()


def test_the_default_authorizer_keeps_user_topics_to_their_user(db):
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    assert default_authorizer(alice, f"user.{alice.pk}")
    assert not default_authorizer(bob, f"user.{alice.pk}")
    assert not default_authorizer(AnonymousUser(), f"user.{alice.pk}")
    assert not default_authorizer(alice, "user.anything")
    assert default_authorizer(AnonymousUser(), "prices.eurusd")


async def test_publish_to_user_reaches_that_users_token_connections_only(hub):
    alice = await User.objects.acreate(username="alice")
    bob = await User.objects.acreate(username="bob")
    mine = connect_token(alice, ttl=60)
    theirs = connect_token(bob, ttl=60)
    first = await connect(query=f"?token={mine}&topics=user.{alice.pk}")
    second = await connect(query=f"?token={mine}&topics=user.{alice.pk}")
    other = await connect(query=f"?token={theirs}&topics=user.{alice.pk}")
    assert (await frame(other))["payload"] == {"topics": [], "denied": [f"user.{alice.pk}"]}
    for client in (first, second):
        assert (await frame(client))["payload"]["topics"] == [f"user.{alice.pk}"]
    sent = await apublish_to_user(alice, "order.shipped", {"order": 7})
    assert sent["topic"] == f"user.{alice.pk}"
    for client in (first, second):
        assert (await frame(client))["payload"] == {"order": 7}
    assert await other.receive_nothing(timeout=0.1)
    for client in (first, second, other):
        await client.disconnect()


async def test_a_token_grants_its_topics_without_the_authorizer(hub, settings):
    settings.BROADCAST_TOPIC_AUTHORIZER = "tests.test_topics.only_public"
    token = connect_token(None, topics=["secret"], ttl=60)
    client = await connect(query=f"?token={token}&topics=secret,other")
    assert (await frame(client))["payload"] == {"topics": ["secret"], "denied": ["other"]}
    await client.disconnect()


@pytest.mark.parametrize("kind", ["expired", "forged", "garbage"])
async def test_a_bad_token_is_refused_at_the_handshake_and_never_logged(hub, kind, caplog):
    token = connect_token(None, ttl=60)
    if kind == "expired":
        token = connect_token(None, ttl=0.001)
        import asyncio

        await asyncio.sleep(1.1)
    elif kind == "forged":
        token = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    else:
        token = "not-a-token"
    app = AllowedOrigins(SessionIfAuthRequired(BroadcastConsumer.as_asgi()))
    communicator = WebsocketCommunicator(app, f"{PATH}?token={token}")
    connected, code = await communicator.connect()
    assert not connected
    assert "Refused a WebSocket (403)" in caplog.text
    assert token not in caplog.text


async def test_a_token_stands_in_for_the_origin_check(hub):
    app = AllowedOrigins(SessionIfAuthRequired(BroadcastConsumer.as_asgi()))
    without = WebsocketCommunicator(app, PATH)
    assert not (await without.connect())[0]
    token = connect_token(None, ttl=60)
    client = await connect(app, query=f"?token={token}")
    assert client.welcome["type"] == "hub.welcome"
    await client.disconnect()
    # A parameter that merely ends in "token" is no token.
    assert not (await WebsocketCommunicator(app, f"{PATH}?notoken=1").connect())[0]


async def test_a_token_user_counts_as_logged_in_for_require_auth(hub, settings):
    settings.BROADCAST_REQUIRE_AUTH = True
    alice = await User.objects.acreate(username="alice")
    app = SessionIfAuthRequired(BroadcastConsumer.as_asgi())
    client = await connect(app, query=f"?token={connect_token(alice, ttl=60)}")
    await client.disconnect()
    assert not (await WebsocketCommunicator(app, PATH).connect())[0]
    alice.is_active = False
    await alice.asave()
    stale = WebsocketCommunicator(app, f"{PATH}?token={connect_token(alice, ttl=60)}")
    assert not (await stale.connect())[0]


def test_tokens_refuse_bad_input(db):
    with pytest.raises(ValueError, match="ttl"):
        connect_token(None, ttl=0)
    with pytest.raises(InvalidTopic):
        connect_token(None, topics=["hub.x"])
    with pytest.raises(ValueError, match="authenticated"):
        connect_token(AnonymousUser())
    grant = read_token(connect_token(None, topics=["b", "a", "a"]))
    assert grant.topics == {"a", "b"} and grant.user_pk is None
    with pytest.raises(InvalidToken):
        read_token("x" * 40)


async def test_resume_replays_the_global_stream_and_the_clients_topics_only(hub):
    first = await apublish("g", {"n": 0})
    await apublish("t", {"n": 1}, topic="mine")
    await apublish("t", {"n": 2}, topic="theirs")
    await apublish("g", {"n": 3})
    last = await apublish("t", {"n": 4}, topic="theirs")
    client = await connect(query=f"?last_id={first['id']}&topics=mine")
    assert (await frame(client))["type"] == "hub.subscribed"
    replayed = [await frame(client) for _ in range(2)]
    assert [f["payload"] for f in replayed] == [{"n": 1}, {"n": 3}]
    resumed = await frame(client)
    assert resumed["type"] == "hub.resumed"
    # Its position is the hub's: the other topic's ids are absent, not missed.
    assert resumed["payload"]["last_id"] == last["id"]
    await client.disconnect()


async def test_a_pong_carries_the_position_a_quiet_topic_can_resume_from(hub):
    client = await connect(query="?topics=quiet")
    await frame(client)
    for n in range(3):
        last = await apublish("busy", {"n": n}, topic="busy")
    await client.send_to(text_data='{"type":"hub.ping"}')
    pong = await frame(client)
    assert pong["payload"] == {"last_id": last["id"]}
    await client.disconnect()


def test_publish_refuses_bad_topics_before_touching_anything(db):
    from broadcast.models import Broadcast

    with pytest.raises(InvalidTopic):
        publish("x", topic="hub.status")
    with pytest.raises(InvalidTopic):
        publish("x", topic="has space")
    assert not Broadcast.objects.exists()


async def test_the_heartbeat_writes_subscribers_per_topic(hub, monkeypatch):
    from broadcast.models import HubProcess
    from broadcast.stream import counts

    monkeypatch.setattr(counts, "TOPIC_COUNTS_KEPT", 2)
    clients = [await connect(query=f"?topics={names}") for names in ("a,b", "a,c", "a,b")]
    for client in clients:
        await frame(client)
    await hub.counts.write()
    row = await HubProcess.objects.aget(pk=hub.counts.row_id)
    assert row.topics == {"a": 3, "b": 2}  # the most subscribed, most first
    for client in clients:
        await client.disconnect()
    await hub.counts.write(stopped=True)
    assert (await HubProcess.objects.aget(pk=hub.counts.row_id)).topics == {}
