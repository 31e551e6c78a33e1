"""WebSocket clients for consumer tests (channels.testing), and a bare uvicorn connection."""

import asyncio
import json

from channels.testing import WebsocketCommunicator

from broadcast.clients.consumer import BroadcastConsumer

PATH = "/ws/broadcast/"


async def connect(app=None, query="", **kwargs):
    """A connected client whose welcome frame (sent once it is registered) was read."""
    communicator = WebsocketCommunicator(app or BroadcastConsumer.as_asgi(), PATH + query, **kwargs)
    connected, _ = await communicator.connect()
    assert connected
    communicator.welcome = await frame(communicator)
    return communicator


async def frame(communicator, timeout=2):
    return json.loads(await communicator.receive_from(timeout=timeout))


async def uvicorn_connection():
    """
    A real uvicorn websockets-sansio protocol on one end of a socket pair, past the
    handshake; returns (the ASGI send it gave the app, the client's socket end).
    """
    import socket

    from uvicorn.config import Config
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from uvicorn.server import ServerState

    accepted = asyncio.get_running_loop().create_future()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        accepted.set_result(send)
        await receive()  # until the disconnect

    config = Config(app=app, ws="websockets-sansio", lifespan="off", log_level="critical")
    config.load()
    server_end, client_end = socket.socketpair()
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(
        lambda: WebSocketsSansIOProtocol(config, ServerState(), {}), server_end
    )
    client_end.setblocking(False)
    await loop.sock_sendall(
        client_end,
        b"GET /ws/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    send = await asyncio.wait_for(accepted, 5)
    assert b"101 Switching Protocols" in await loop.sock_recv(client_end, 4096)
    return send, client_end
