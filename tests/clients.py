"""WebSocket clients for consumer tests through channels.testing."""

import json

from channels.testing import WebsocketCommunicator

from broadcast.consumers import BroadcastConsumer

PATH = "/ws/broadcast/"


async def connect(app=None, query="", **kwargs):
    """A connected client whose welcome frame (sent once it is registered) was read."""
    communicator = WebsocketCommunicator(app or BroadcastConsumer.as_asgi(), PATH + query, **kwargs)
    connected, _ = await communicator.connect()
    assert connected
    communicator.welcome = await frame(communicator)
    return communicator


async def frame(communicator):
    return json.loads(await communicator.receive_from(timeout=2))
