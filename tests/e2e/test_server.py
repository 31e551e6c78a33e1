"""End to end on the embedded default: one daphne process, in-memory layer."""

import asyncio

import pytest
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import ADMIN_PASSWORD, ADMIN_USER, Browser, frames, no_frame

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
        assert all(set(frame) == {"id", "type", "payload", "timestamp"} for frame in received)
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
        "CommandError: The in-memory channel layer cannot reach the server, which is another "
        "process: set REDIS_URL (for example redis://127.0.0.1:6379/0) for both the server "
        "and this command."
    ]
