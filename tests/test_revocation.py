"""
Access taken back: a password change invalidates connect tokens minted before it; a
user deactivated, deleted, with a new password, or named to ``disconnect_user`` loses
every open connection (4003), and nothing published after reaches it; a token
connection ends at its token's expiry (4001) unless it refreshes in-band.
"""

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import AsyncClient

from broadcast import apublish
from broadcast.clients import access
from broadcast.clients.consumer import BroadcastConsumer
from broadcast.clients.tokens import connect_token
from broadcast.models import Broadcast
from broadcast.publishing.revocation import adisconnect_user
from broadcast.routing import SessionIfAuthRequired
from tests.clients import PATH, connect, frame

pytestmark = pytest.mark.django_db(transaction=True)


async def closed_with(client, timeout=2, received=None):
    """The close code; the frames still ahead of the close go into ``received``."""
    while True:
        output = await client.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return output["code"]
        if received is not None:
            received.append(json.loads(output["text"]))


async def token_client(user, **kwargs):
    return await connect(query=f"?token={connect_token(user, ttl=60)}", **kwargs)


async def test_a_password_change_refuses_tokens_minted_before_it(hub):
    alice = await User.objects.acreate_user("alice", password="old")
    before = connect_token(alice, ttl=3600)
    alice.set_password("new")
    await alice.asave()
    refused = WebsocketCommunicator(BroadcastConsumer.as_asgi(), f"{PATH}?token={before}")
    assert not (await refused.connect())[0]
    after = await connect(query=f"?token={connect_token(alice, ttl=60)}")
    assert after.welcome["type"] == "hub.welcome"
    await after.disconnect()


@pytest.mark.parametrize("change", ["password", "deactivate", "delete", "disconnect_user"])
async def test_a_users_open_connections_close_with_4003_and_get_nothing_after(hub, change):
    alice = await User.objects.acreate_user("alice", password="old")
    bob = await User.objects.acreate_user("bob", password="pw")
    mine = [await token_client(alice) for _ in range(2)]
    theirs = await token_client(bob)
    if change == "password":
        alice.set_password("new")
        await alice.asave()
    elif change == "deactivate":
        alice.is_active = False
        await alice.asave()
    elif change == "delete":
        await alice.adelete()
    else:
        await adisconnect_user(alice)
    after = await apublish("after", 1)
    for client in mine:
        received = []
        assert await closed_with(client, received=received) == 4003
        assert after["id"] not in [one["id"] for one in received]
    assert (await frame(theirs))["id"] == after["id"]
    await theirs.disconnect()


async def test_a_login_or_profile_save_revokes_nothing(hub):
    alice = await User.objects.acreate_user("alice", password="pw")
    client = await token_client(alice)
    alice.first_name = "Alice"
    await alice.asave()
    await AsyncClient().alogin(username="alice", password="pw")  # saves last_login
    sent = await apublish("still", 1)
    assert (await frame(client))["id"] == sent["id"]
    assert not await Broadcast.objects.filter(type="hub.revoke").aexists()
    await client.disconnect()


async def test_a_session_connection_of_the_user_is_closed_too(hub, settings):
    alice = await User.objects.acreate_user("alice", password="pw")
    browser = AsyncClient()
    await browser.aforce_login(alice)
    cookie = f"{settings.SESSION_COOKIE_NAME}={browser.cookies[settings.SESSION_COOKIE_NAME].value}"
    app = SessionIfAuthRequired(BroadcastConsumer.as_asgi())
    client = await connect(app, headers=[(b"cookie", cookie.encode())])
    await adisconnect_user(alice.pk)
    assert await closed_with(client) == 4003


async def test_a_revocation_during_the_access_check_is_not_missed(hub, monkeypatch):
    """The revocation reaches the process between the token check and the register."""
    alice = await User.objects.acreate_user("alice", password="pw")
    real_owner = access.AccessRules._owner

    async def owner_then_revoked(self):
        owner = await real_owner(self)
        hub.revoke(owner)  # what the relay does with a revocation arriving now
        return owner

    monkeypatch.setattr(access.AccessRules, "_owner", owner_then_revoked)
    token = connect_token(alice, ttl=60)
    client = WebsocketCommunicator(BroadcastConsumer.as_asgi(), f"{PATH}?token={token}")
    assert (await client.connect())[0]
    await apublish("after", 1)
    received = []
    assert await closed_with(client, received=received) == 4003
    assert received == []  # closed before the relay's next turn: not even its welcome


async def test_a_revocation_is_never_replayed_to_a_resuming_client(hub):
    alice = await User.objects.acreate_user("alice", password="pw")
    first = await apublish("one", 1)
    await adisconnect_user(alice)
    last = await apublish("two", 2)
    client = await connect(query=f"?last_id={first['id'] - 1}")
    got = [await frame(client) for _ in range(3)]
    assert [one["type"] for one in got] == ["one", "two", "hub.resumed"]
    assert got[1]["id"] == last["id"]
    await client.disconnect()


# A token's lifetime --------------------------------------------------------------


async def test_a_token_connection_is_warned_then_closed_with_4001_at_expiry(hub):
    client = await connect(query=f"?token={connect_token(None, ttl=2)}")
    warning = await frame(client, timeout=3)
    assert warning["type"] == "hub.expiring"
    assert 0 <= warning["payload"]["expires_in"] <= 1
    assert await closed_with(client, timeout=3) == 4001


async def test_a_refreshed_token_keeps_the_connection_past_the_first_expiry(hub):
    alice = await User.objects.acreate_user("alice", password="pw")
    client = await connect(query=f"?token={connect_token(alice, ttl=2)}")
    assert (await frame(client, timeout=3))["type"] == "hub.expiring"
    fresh = connect_token(alice, ttl=60)
    await client.send_to(json.dumps({"type": "hub.refresh", "token": fresh}))
    refreshed = await frame(client)
    assert refreshed["type"] == "hub.refreshed"
    assert 55 <= refreshed["payload"]["expires_in"] <= 60
    await asyncio.sleep(1.5)  # past the first token's expiry
    sent = await apublish("still", 1)
    assert (await frame(client))["id"] == sent["id"]
    await client.disconnect()


@pytest.mark.parametrize("bad", ["other user", "garbage", "not a string"])
async def test_a_refresh_with_a_bad_token_is_refused_and_the_expiry_stands(hub, bad):
    alice = await User.objects.acreate_user("alice", password="pw")
    bob = await User.objects.acreate_user("bob", password="pw")
    client = await connect(query=f"?token={connect_token(alice, ttl=2)}")
    token = {"other user": connect_token(bob, ttl=60), "garbage": "x", "not a string": 7}[bad]
    await client.send_to(json.dumps({"type": "hub.refresh", "token": token}))
    error = await frame(client)
    assert error["type"] == "hub.error"
    assert error["payload"]["error"].startswith("hub.refresh refused")
    assert (await frame(client, timeout=3))["type"] == "hub.expiring"
    assert await closed_with(client, timeout=3) == 4001


async def test_a_password_change_closes_a_token_connection_and_its_token_cannot_return(hub):
    alice = await User.objects.acreate_user("alice", password="old")
    old = connect_token(alice, ttl=60)
    client = await connect(query=f"?token={old}")
    alice.set_password("new")
    await alice.asave()
    assert await closed_with(client) == 4003
    again = WebsocketCommunicator(BroadcastConsumer.as_asgi(), f"{PATH}?token={old}")
    assert not (await again.connect())[0]


async def test_a_revocation_sent_before_a_fresh_process_joined_still_closes_a_connect_in_flight(
    hub, monkeypatch
):
    """The process's first connect was judged before a revocation its relay never got."""
    alice = await User.objects.acreate_user("alice", password="pw")
    real_owner = access.AccessRules._owner

    async def owner_then_revoked_elsewhere(self):
        owner = await real_owner(self)
        await adisconnect_user(alice)  # no relay in the group yet: this process misses it
        return owner

    monkeypatch.setattr(access.AccessRules, "_owner", owner_then_revoked_elsewhere)
    token = connect_token(alice, ttl=60)
    first = WebsocketCommunicator(BroadcastConsumer.as_asgi(), f"{PATH}?token={token}")
    assert (await first.connect())[0]
    assert await closed_with(first) == 4003
    monkeypatch.setattr(access.AccessRules, "_owner", real_owner)
    again = await token_client(alice)  # judged after it: a kick is not a ban
    assert again.welcome["type"] == "hub.welcome"
    await again.disconnect()


async def test_a_resume_never_replays_past_a_revocation_the_relay_has_not_applied(hub, monkeypatch):
    alice = await User.objects.acreate_user("alice", password="pw")
    client = await token_client(alice)
    position = client.welcome["payload"]["last_id"]
    gate = asyncio.Event()
    real_deliver = hub.relay._deliver

    async def held_back(batch, *args):
        await gate.wait()  # the relay is behind: sweeping, paced, or slow to Redis
        await real_deliver(batch, *args)

    monkeypatch.setattr(hub.relay, "_deliver", held_back)
    await adisconnect_user(alice)
    after = await apublish("after", 1)
    await client.send_to(json.dumps({"type": "hub.resume", "last_id": position}))
    resumed = await frame(client)
    assert resumed["type"] == "hub.resumed" and resumed["payload"]["count"] == 0
    gate.set()
    received = []
    assert await closed_with(client, received=received) == 4003
    assert after["id"] not in [one["id"] for one in received]


async def test_a_refresh_unsubscribes_the_topics_the_new_token_no_longer_grants(hub, settings):
    settings.BROADCAST_TOPIC_AUTHORIZER = "tests.test_topics.only_public"
    client = await connect(
        query=f"?token={connect_token(None, topics=['a', 'b'], ttl=60)}&topics=a,b"
    )
    assert (await frame(client))["payload"] == {"topics": ["a", "b"], "denied": []}
    narrower = connect_token(None, topics=["a"], ttl=60)
    await client.send_to(json.dumps({"type": "hub.refresh", "token": narrower}))
    assert (await frame(client))["type"] == "hub.refreshed"
    dropped = await frame(client)
    assert (dropped["type"], dropped["payload"]) == ("hub.unsubscribed", {"topics": ["b"]})
    await apublish("on-b", 1, topic="b")
    on_a = await apublish("on-a", 2, topic="a")
    assert (await frame(client))["id"] == on_a["id"]
    await client.disconnect()


async def test_a_database_that_cannot_be_read_at_a_token_connect_is_try_again_not_403(
    hub, monkeypatch
):
    from django.db import OperationalError

    alice = await User.objects.acreate_user("alice", password="pw")

    def unreachable(pk):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(access, "_active_user", unreachable)
    client = WebsocketCommunicator(
        BroadcastConsumer.as_asgi(), f"{PATH}?token={connect_token(alice, ttl=60)}"
    )
    assert (await client.connect())[0]  # accepted, then told to come back
    assert await closed_with(client) == 1013


class Member(User):
    """A proxy of the user model, as an app or its admin may save users through."""

    class Meta:
        proxy = True
        app_label = "auth"


async def test_a_password_change_through_a_proxy_model_revokes_too(hub):
    alice = await User.objects.acreate_user("alice", password="old")
    client = await token_client(alice)
    member = await Member.objects.aget(pk=alice.pk)
    member.set_password("new")
    await member.asave()
    assert await closed_with(client) == 4003


async def test_a_save_that_leaves_the_password_out_of_its_fields_revokes_nothing(hub):
    alice = await User.objects.acreate_user("alice", password="old")
    client = await token_client(alice)
    alice.set_password("never saved")
    alice.first_name = "Alice"
    await alice.asave(update_fields=["first_name"])
    sent = await apublish("still", 1)
    assert (await frame(client))["id"] == sent["id"]
    assert not await Broadcast.objects.filter(type="hub.revoke").aexists()
    await client.disconnect()


async def test_a_failed_revocation_can_be_resent_and_closes_then(hub):
    from asgiref.sync import sync_to_async

    from broadcast.publishing.api import resend

    alice = await User.objects.acreate_user("alice", password="pw")
    revocation = await adisconnect_user(alice)
    client = await token_client(alice)  # after the first: a kick is not a ban
    row = await Broadcast.objects.aget(seq=revocation["id"])
    again = await sync_to_async(resend)(row)
    assert again["topic"] == "hub.revoke" and again["id"] > revocation["id"]
    assert await closed_with(client) == 4003


async def test_disconnect_user_takes_a_primary_key_however_it_is_spelled(hub):
    alice = await User.objects.acreate_user("alice", password="pw")
    client = await token_client(alice)
    await adisconnect_user(f"0{alice.pk}")
    assert await closed_with(client) == 4003
