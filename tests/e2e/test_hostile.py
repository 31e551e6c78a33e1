"""What a hostile client meets on a real server, daphne and uvicorn."""

import json
import time

import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import close_code, frames, no_frame

pytestmark = [pytest.mark.e2e]


@pytest.fixture(params=["daphne", "uvicorn"])
def server(request, site, start_server):
    return start_server(site.with_env(BROADCAST_MAX_CONNECTIONS="3"), request.param)


async def test_bad_frames_get_close_codes_or_errors_and_reach_nobody(server):
    listener = await server.client()

    chatty = await server.client()
    await chatty.send("{not json")
    await chatty.send(json.dumps({"type": "announcement", "payload": {"spoof": True}}))
    replies = await frames(chatty, 2)
    assert [reply["type"] for reply in replies] == ["hub.error", "hub.error"]
    await chatty.send("x" * 5000)  # over BROADCAST_MAX_INCOMING_BYTES (4 KiB)
    assert await close_code(chatty) == 1009

    binary = await server.client()
    await binary.send(b"\x00\x01")
    assert await close_code(binary) == 1003

    flooder = await server.client()
    for _ in range(40):  # over 10 a second, bursts of 20
        await flooder.send('{"type": "hub.ping"}')
    assert await close_code(flooder) == 1008

    assert await no_frame(listener, 0.3)
    await listener.close()
    assert "Traceback" not in server.log()


async def test_a_client_that_answers_its_close_late_still_learns_the_code(server):
    late = await server.client()
    await late.send(b"\x00\x01")
    # The client's loop stands still, as a loaded client's does, then sends what it
    # had queued: its answer to the close frame comes a second and a half later,
    # after more frames. The code must still be read, not lost to a reset.
    time.sleep(1.5)
    await late.send('{"type": "hub.ping"}')
    assert await close_code(late) == 1003


async def test_connections_over_the_limit_are_closed_with_1013(server):
    clients = [await server.client() for _ in range(3)]
    excess = await connect(server.ws_url, origin=server.http)  # accepted, then closed
    assert await close_code(excess) == 1013
    for ws in clients:
        await ws.close()
