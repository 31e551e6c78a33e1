"""
The ceiling: a minimal raw ASGI broadcast app (a set of ``send`` callables, no
Channels, no Django), served by the same server and measured with the same client.
"""

from __future__ import annotations

import os

from bench.control import handle, payload_text
from broadcast.tuning import connection_closed, connection_opened, tune_gc

clients: set = set()

# The same garbage-collector tuning as hubsite.asgi, paced by this app's own closes
# as the hub's are, so the ceiling is measured on equal terms (broadcast.tuning
# imports nothing from Django).
if os.environ.get("HUB_GC_TUNING", "1") != "0":
    tune_gc()


async def publish_one(number: int, sent_at: float) -> None:
    text = (
        f'{{"id":null,"type":"bench","payload":{payload_text(number, sent_at)},'
        f'"timestamp":"2026-01-01T00:00:00.000Z"}}'
    )
    message = {"type": "websocket.send", "text": text}
    for send in tuple(clients):
        await send(message)


async def app(scope, receive, send):
    if await handle(scope, receive, send, publish_one):
        return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": '{"type":"hub.welcome"}'})
        clients.add(send)
        connection_opened()
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            clients.discard(send)
            connection_closed(len(clients))
    elif scope["type"] == "http":
        await receive()
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
