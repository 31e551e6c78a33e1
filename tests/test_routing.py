"""The WebSocket routing layers: the remembered Origin check and the session switch."""

import asyncio
from urllib.parse import urlparse

import pytest
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator

from broadcast.routing import AllowedOrigins, SessionIfAuthRequired, websocket_urlpatterns

pytestmark = pytest.mark.django_db(transaction=True)

ORIGINS = [
    b"http://127.0.0.1:8000", b"http://localhost", b"https://localhost:443",
    b"http://evil.example", b"http://127.0.0.1.evil.example", b"null", b"", b"ws://[::1]:9",
    b"http://LOCALHOST", b"javascript:alert(1)",
]  # fmt: skip


def app():
    return AllowedOrigins(SessionIfAuthRequired(URLRouter(websocket_urlpatterns)))


@pytest.mark.parametrize("origin", [*ORIGINS, None])
def test_the_verdict_is_channels_own(settings, origin):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
    channels_check = AllowedHostsOriginValidator(None)
    parsed = urlparse(origin.decode("latin1")) if origin is not None else None
    assert AllowedOrigins(None).judge(origin) is channels_check.valid_origin(parsed)


async def connect(application, origin):
    headers = [(b"origin", origin)] if origin is not None else []
    communicator = WebsocketCommunicator(application, "/ws/broadcast/", headers=headers)
    connected, _ = await communicator.connect()
    if connected:
        await communicator.disconnect()
    return connected


async def test_allowed_origins_connect_and_others_are_refused_every_time(hub):
    application = app()
    for _ in range(2):  # the second round is answered from what was remembered
        assert await connect(application, b"http://127.0.0.1:8000")
        assert not await connect(application, b"http://evil.example")
        assert not await connect(application, None)


def test_what_it_remembers_is_bounded():
    check = AllowedOrigins(None)
    check.application = lambda scope, receive, send: None
    for n in range(AllowedOrigins.MAX_REMEMBERED * 3):
        scope = {"type": "websocket", "headers": [(b"origin", f"http://h{n}.example".encode())]}
        check(scope, None, None).close()  # the denier's coroutine, never run
    assert check.remembered <= AllowedOrigins.MAX_REMEMBERED


async def test_a_refused_origin_is_logged_once_with_what_to_send(hub, caplog):
    """A script without an Origin header gets 403; the log says why, once."""
    application = app()
    with caplog.at_level("WARNING", logger="broadcast.routing"):
        for _ in range(3):
            assert not await connect(application, None)
            assert not await connect(application, b"http://evil.example")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "Refused a WebSocket with no Origin header (403): browsers always send one; a script "
        "or a mobile client must send an Origin whose host is in ALLOWED_HOSTS.",
        "Refused a WebSocket from Origin 'http://evil.example' (403): its host is not in "
        "ALLOWED_HOSTS.",
    ]


@pytest.mark.parametrize("layer", [None, "redis_layer", "pubsub_layer"])
async def test_a_refused_handshake_leaves_nothing_running(request, layer):
    """
    Once the server reports the refused client gone, nothing of it is left: a task still
    running would be kept by the server, one per refused client, and uvicorn's shutdown
    waits for every such task before it exits.
    """
    if layer is not None:
        request.getfixturevalue(layer)
    communicator = WebsocketCommunicator(app(), "/ws/broadcast/")  # no Origin: refused
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.send_input({"type": "websocket.disconnect", "code": 1006})
    for _ in range(40):
        if communicator.future.done():
            break
        await asyncio.sleep(0.05)
    assert communicator.future.done()
