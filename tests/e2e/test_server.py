"""End to end on the embedded default: one daphne process, in-memory layer."""

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    Browser,
    close_code,
    frames,
    no_frame,
)

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def server(site, start_server):
    return start_server(site)


async def test_a_broadcast_saved_in_the_admin_reaches_every_client_once(server):
    clients = [await server.client() for _ in range(3)]
    browser = Browser(server.http)
    browser.login(ADMIN_USER, ADMIN_PASSWORD)
    for n in range(2):
        status, page = await asyncio.to_thread(
            browser.post,
            "/admin/broadcast/broadcast/add/",
            {"type": "announcement", "payload": f'{{"text": "Deploy {n}"}}', "_save": "Save"},
        )
        assert status == 200 and "was added successfully" in page
    for ws in clients:
        received = await frames(ws, 2)
        assert [frame["payload"] for frame in received] == [
            {"text": "Deploy 0"},
            {"text": "Deploy 1"},
        ]
        assert received[0]["id"] < received[1]["id"]
        assert received[0]["id"] > ws.welcome["payload"]["last_id"]
        keys = {"id", "type", "topic", "payload", "timestamp"}
        assert all(set(frame) == keys and frame["topic"] is None for frame in received)
        assert await no_frame(ws)
        await ws.close()


async def test_an_invalid_admin_form_is_an_error_not_a_500_and_sends_nothing(server):
    ws = await server.client()
    browser = Browser(server.http)
    browser.login(ADMIN_USER, ADMIN_PASSWORD)
    status, page = await asyncio.to_thread(
        browser.post, "/admin/broadcast/broadcast/add/", {"type": "news", "payload": "{oops"}
    )
    assert status == 200 and "Enter a valid JSON." in page
    assert await no_frame(ws)
    await ws.close()


async def test_what_one_client_sends_reaches_no_other(server):
    talker, listener = await server.client(), await server.client()
    await talker.send('{"type": "announcement", "payload": {"spoof": true}}')
    (reply,) = await frames(talker, 1)
    assert reply["type"] == "hub.error"
    assert await no_frame(listener)
    await talker.close()
    await listener.close()


async def test_a_foreign_origin_is_refused_with_403(server):
    with pytest.raises(InvalidStatus) as info:
        await server.client(origin="http://evil.example")
    assert info.value.response.status_code == 403


async def test_the_live_total_follows_real_connections(site, server):
    clients = [await server.client() for _ in range(5)]
    await asyncio.to_thread(site.wait_for_live_total, 5)
    for ws in clients[:3]:
        await ws.close()
    await asyncio.to_thread(site.wait_for_live_total, 2)
    for ws in clients[3:]:
        await ws.close()
    await asyncio.to_thread(site.wait_for_live_total, 0)


def test_the_command_refuses_the_in_memory_layer_in_one_line(site):
    result = site.manage("broadcast", "news", "{}", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "CommandError: This command cannot reach the server, another process: the in-memory "
        "channel layer reaches this process only. Set CHANNEL_LAYERS['default'] to "
        "channels_redis.core.RedisChannelLayer (pip install 'django-broadcast-hub[redis]'; "
        "docs/operations.md) for the servers and for this process."
    ]


def test_probes_answer_plain_http_while_the_site_redirects_to_https(site, start_server):
    import urllib.error
    import urllib.request

    production = site.with_env(DJANGO_DEBUG="0", DJANGO_SECRET_KEY="e2e-" + "k" * 50)
    server = start_server(production, "uvicorn")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)

    def status(path: str) -> int:
        try:
            with opener.open(server.http + path, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status("/") == 301
    assert status("/healthz") == 200
    assert status("/metrics") == 200


async def test_a_second_server_process_on_the_in_memory_layer_refuses_clients_saying_why(
    site, start_server
):
    first = start_server(site)
    served = await first.client()  # the first process serves the hub from its first client
    second = start_server(site, "uvicorn")
    refused = await connect(second.ws_url, origin=second.http)
    assert await close_code(refused) == 1011
    assert "Another server process already serves the broadcast hub" in second.log()
    assert first.process.poll() is None and await no_frame(served, 0.2)


async def test_publish_from_another_process_on_the_in_memory_layer_is_an_error(site, start_server):
    server = start_server(site)
    client = await server.client()  # the process serves the hub from its first client
    result = await asyncio.to_thread(
        site.manage,
        "shell",
        "-c",
        "from broadcast import publish\ntry:\n    publish('refused.in.memory', 1)\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)",
    )
    assert "ImproperlyConfigured" in result.stdout and "CHANNEL_LAYERS" in result.stdout
    assert server.process.poll() is None
    rows = site.shell(
        "from broadcast.models import Broadcast as B\n"
        "print(B.objects.filter(type='refused.in.memory').count())"
    )
    assert rows.strip() == "0"  # refused before anything was stored
    await client.close()
