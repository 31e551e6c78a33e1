"""
Topics, per-user streams, connect tokens and the HTTP publish API against two real
server processes of one kind (daphne or uvicorn) sharing Redis and a database.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import frames, no_frame

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEY = "e2e-publish-key-0123456789"
KINDS = ["daphne", "uvicorn"]


@pytest.fixture
def api_site(redis_site):
    return redis_site.with_env(BROADCAST_API_KEYS=KEY)


@pytest.fixture(scope="module")
def accounts(site) -> dict[str, int]:
    """Users in the site's database (staffer is staff), by name: their primary keys."""
    code = (
        "from django.contrib.auth.models import User\n"
        "for name in ['alice', 'bob', 'staffer', 'member']:\n"
        "    user, _ = User.objects.get_or_create(username=name, "
        "defaults={'is_staff': name == 'staffer'})\n"
        "    print(name, user.pk)\n"
    )
    lines = site.shell(code).splitlines()
    return {name: int(pk) for name, pk in (line.split() for line in lines if line)}


def token(pk: int | None, topics=(), ttl: float = 600) -> str:
    """
    A connect token for the user with this primary key, minted here: the servers share
    this process's settings, SECRET_KEY included (a Django shell per token costs seconds).
    """
    from django.contrib.auth.models import User

    from broadcast.clients.tokens import connect_token

    return connect_token(None if pk is None else User(pk=pk), topics=topics, ttl=ttl)


def http_publish(server, body, key=KEY) -> tuple[int, dict]:
    request = urllib.request.Request(
        server.http + "/broadcast/publish",
        data=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {key}"} if key else {}),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, json.loads(body) if error.code != 404 else {"page": body}


async def client(server, query: str = "", *, origin: bool = True):
    ws = await connect(
        server.ws_url + query, origin=server.http if origin else None, max_size=2**22
    )
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "hub.welcome"
    ws.answer = json.loads(await ws.recv()) if "topics=" in query else None
    return ws


async def expect(ws, ids: list[int]) -> None:
    got = [frame["id"] for frame in await frames(ws, len(ids))]
    assert got == ids
    assert await no_frame(ws, 0.3)


@pytest.mark.parametrize("kind", KINDS)
async def test_topics_and_user_streams_across_two_processes(kind, api_site, start_server, accounts):
    one, two = start_server(api_site, kind), start_server(api_site, kind)
    alice, bob = accounts["alice"], accounts["bob"]
    alice_token, bob_token = token(alice), token(bob)
    # Token clients send no Origin at all, as a mobile app or a service would.
    alice_one = await client(one, f"?token={alice_token}&topics=user.{alice}", origin=False)
    alice_two = await client(two, f"?token={alice_token}&topics=user.{alice}", origin=False)
    bob_two = await client(two, f"?token={bob_token}&topics=user.{alice},user.{bob}", origin=False)
    assert alice_one.answer["payload"] == {"topics": [f"user.{alice}"], "denied": []}
    assert bob_two.answer["payload"] == {"topics": [f"user.{bob}"], "denied": [f"user.{alice}"]}
    # Without a token or a session, another user's stream is denied too.
    anonymous = await client(one, f"?topics=user.{alice},news")
    assert anonymous.answer["payload"] == {"topics": ["news"], "denied": [f"user.{alice}"]}
    news_two = await client(two, "?topics=news")
    sport_one = await client(one, "?topics=sport")
    plain_two = await client(two)

    status, news = http_publish(one, {"type": "headline", "payload": {"n": 1}, "topic": "news"})
    assert status == 201 and news["topic"] == "news"
    out = api_site.shell(
        "from django.contrib.auth.models import User\n"
        "from broadcast import publish_to_user\n"
        f"print(publish_to_user(User.objects.get(pk={alice}), 'dm', {{'hi': 1}})['id'])\n"
    )
    private = int(out.strip())
    status, banner = http_publish(two, {"type": "banner"})
    assert status == 201
    shared = banner["id"]

    await expect(alice_one, [private, shared])
    await expect(alice_two, [private, shared])
    await expect(bob_two, [shared])
    await expect(anonymous, [news["id"], shared])
    await expect(news_two, [news["id"], shared])
    await expect(sport_one, [shared])
    await expect(plain_two, [shared])
    for ws in (alice_one, alice_two, bob_two, anonymous, news_two, sport_one, plain_two):
        await ws.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_the_authorizer_decides_who_subscribes(kind, redis_site, start_server, accounts):
    site = redis_site.with_env(BROADCAST_TOPIC_AUTHORIZER="tests.e2e.topic_rules.staff_or_public")
    server = start_server(site, kind)
    staffer, member_pk = accounts["staffer"], accounts["member"]
    staff = await client(server, f"?token={token(staffer)}&topics=staff.ops,public.x")
    member = await client(server, f"?token={token(member_pk)}&topics=staff.ops,public.x")
    assert staff.answer["payload"] == {"topics": ["staff.ops", "public.x"], "denied": []}
    assert member.answer["payload"] == {"topics": ["public.x"], "denied": ["staff.ops"]}
    # A token's own topics need no authorizer.
    granted = await client(server, f"?token={token(member_pk, ['staff.ops'])}&topics=staff.ops")
    assert granted.answer["payload"]["topics"] == ["staff.ops"]
    await member.send(json.dumps({"type": "hub.subscribe", "topics": ["staff.audit", "other"]}))
    (answer,) = await frames(member, 1)
    assert answer["payload"] == {"topics": [], "denied": ["staff.audit", "other"]}
    for ws in (staff, member, granted):
        await ws.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_bad_tokens_get_403_and_no_log_line_shows_a_token(
    kind, redis_site, start_server, accounts
):
    server = start_server(redis_site, kind)
    expired = token(accounts["alice"], ttl=1)
    valid = token(accounts["alice"])
    forged = valid[:-3] + ("xyz" if not valid.endswith("xyz") else "abc")
    await asyncio.sleep(2.1)
    for bad in (expired, forged, "garbage"):
        with pytest.raises(InvalidStatus) as info:
            await connect(server.ws_url + f"?token={bad}")
        assert info.value.response.status_code == 403
    ok = await client(server, f"?token={valid}", origin=False)
    await ok.close()
    # Without a token, no Origin is still refused.
    with pytest.raises(InvalidStatus):
        await connect(server.ws_url)
    time.sleep(0.3)
    ours = [line for line in server.log().splitlines() if " broadcast." in line]
    assert any("connect token has expired" in line for line in ours)
    assert any("bad signature" in line for line in ours)
    for secret in (expired, valid, forged):
        assert not any(secret in line for line in ours)


@pytest.mark.parametrize("kind", KINDS)
async def test_resume_across_topics_misses_nothing_and_repeats_nothing(
    kind, api_site, start_server
):
    one, two = start_server(api_site, kind), start_server(api_site, kind)
    first = await client(one, "?topics=news")
    _, start = http_publish(one, {"type": "api.x", "topic": "news"})
    (got,) = await frames(first, 1)
    last_seen = got["id"]
    await first.close()
    for topic in ("news", "sport", None, "news", "sport", None):
        http_publish(two, {"type": "away", "topic": topic})

    # Publishing goes on while the client resumes: the seam between history and the
    # live stream must lose nothing and repeat nothing.
    stop = threading.Event()

    def keep_publishing():
        topics = ["news", "sport", None]
        n = 0
        while not stop.is_set():
            http_publish(one, {"type": "during", "topic": topics[n % 3]})
            n += 1

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    await asyncio.sleep(0.2)
    again = await client(two, f"?topics=news&last_id={last_seen}")
    await asyncio.sleep(0.5)
    stop.set()
    publisher.join()
    _, marker = http_publish(one, {"type": "marker"})
    received = []
    while True:
        frame = json.loads(await asyncio.wait_for(again.recv(), 10))
        if frame["type"] == "hub.resumed":
            continue
        assert frame["topic"] in (None, "news"), frame
        assert frame["id"] is not None, frame  # no control frame but hub.resumed
        received.append(frame["id"])
        if frame["id"] == marker["id"]:
            break
    await again.close()
    rows = json.loads(
        api_site.shell(
            "import json\nfrom broadcast.models import Broadcast\n"
            f"print(json.dumps(list(Broadcast.objects.filter(seq__gt={last_seen}, "
            "status='sent').order_by('seq').values_list('seq', 'topic'))))"
        )
    )
    owed = [seq for seq, topic in rows if topic in ("", "news")]
    assert received == owed  # in id order, each once, none missing
    assert len(owed) > 6


@pytest.mark.parametrize("kind", KINDS)
async def test_the_http_api_answers_every_status(kind, api_site, redis_site, start_server):
    server = start_server(api_site, kind)
    assert http_publish(server, {"type": "api.x"})[0] == 201
    assert http_publish(server, {"type": "api.x"}, key="wrong-key-wrong-key")[0] == 401
    assert http_publish(server, {"type": "api.x"}, key=None)[0] == 401
    status, answer = http_publish(server, {"type": "hub.x"})
    assert status == 400 and "reserved" in answer["error"]
    assert http_publish(server, b"{not json")[0] == 400
    assert http_publish(server, {"type": "api.x", "payload": "y" * 70_000})[0] == 413
    assert http_publish(server, {"type": "api.x", "payload": "y" * 200_000})[0] == 413
    # Without keys the endpoint does not exist.
    closed = start_server(redis_site, kind)
    assert http_publish(closed, {"type": "api.x"})[0] == 404
    # With the channel layer down: 503, and the row is marked failed to resend.
    down = start_server(api_site.with_redis("redis://127.0.0.1:1/0"), kind)
    status, answer = http_publish(down, {"type": f"while.down.{kind}"})
    assert status == 503 and "marked failed" in answer["error"]
    statuses = api_site.shell(
        "from broadcast.models import Broadcast\n"
        f"print(list(Broadcast.objects.filter(type='while.down.{kind}')"
        ".values_list('status', flat=True)))"
    )
    assert statuses.strip() == "['failed']"
