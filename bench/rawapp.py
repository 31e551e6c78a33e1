"""
The ceiling: a minimal raw ASGI broadcast app (a set of ``send`` callables, no
Channels, no Django), served by the same server and measured with the same client.
"""

from __future__ import annotations

import os
import urllib.parse

from bench.control import handle, payload_text
from broadcast.stream.tuning import connection_closed, connection_opened, tune_gc

clients: set = set()
# topic -> the sends of its subscribers (``?topics=a,b`` on connect), as a raw app
# with topics would keep them.
subscribers: dict[str, set] = {}

# The same garbage-collector tuning as hubsite.asgi, paced by this app's own closes
# as the hub's are, so the ceiling is measured on equal terms (broadcast.stream.tuning
# imports nothing from Django).
if os.environ.get("HUB_GC_TUNING", "1") != "0":
    tune_gc()


async def publish_one(number: int, sent_at: float, topic: str | None) -> None:
    topic_json = "null" if topic is None else f'"{topic}"'
    text = (
        f'{{"id":null,"type":"bench","topic":{topic_json},'
        f'"payload":{payload_text(number, sent_at)},"timestamp":"2026-01-01T00:00:00.000Z"}}'
    )
    message = {"type": "websocket.send", "text": text}
    for send in tuple(clients if topic is None else subscribers.get(topic, ())):
        await send(message)


async def app(scope, receive, send):
    if await handle(scope, receive, send, publish_one):
        return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": '{"type":"hub.welcome"}'})
        clients.add(send)
        topics = _topics(scope)
        for topic in topics:
            subscribers.setdefault(topic, set()).add(send)
        connection_opened()
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            clients.discard(send)
            for topic in topics:
                subscribers[topic].discard(send)
            connection_closed(len(clients))
    elif scope["type"] == "http":
        await receive()
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _topics(scope) -> list[str]:
    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode())
    return [name for value in query.get("topics", ()) for name in value.split(",") if name]
