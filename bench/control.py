"""
The control route both benchmark apps share: ``GET /bench/publish?count=M&rate=R``
starts publishing M broadcasts at R per second (0: as fast as possible) inside the
server process, each payload carrying its publish time, and answers at once. With
``&topics=K``, broadcast n goes to topic ``t{n % K}`` instead of every client. With
``&burst=B``, broadcasts go in bursts of B issued together (as by B concurrent
requests), R bursts a second (0: one burst after another).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Awaitable, Callable

PublishOne = Callable[[int, float, str | None], Awaitable[None]]

_tasks: set[asyncio.Task] = set()


def topic_of(number: int, topics: int) -> str | None:
    """The topic broadcast ``number`` goes to when there are ``topics`` (0: none)."""
    return f"t{number % topics}" if topics else None


async def paced(
    count: int, rate: float, publish_one: PublishOne, topics: int = 0, burst: int = 0
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    if burst:
        for first in range(0, count, burst):
            if rate > 0:
                delay = start + first // burst / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            # Issued together, as by concurrent requests: on the in-memory layer a
            # publish yields once, so publishes awaited one by one never get ahead of
            # the fan-out, however fast they come.
            numbers = range(first, min(first + burst, count))
            await asyncio.gather(
                *(publish_one(number, time.time(), topic_of(number, topics)) for number in numbers)
            )
        return
    for number in range(count):
        if rate > 0:
            delay = start + number / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await publish_one(number, time.time(), topic_of(number, topics))
        if rate <= 0:
            await asyncio.sleep(0)  # let the fan-out run between publishes


async def handle(scope: dict, receive: Callable, send: Callable, publish_one: PublishOne) -> bool:
    """Serve the control route; False when ``scope`` is not for it."""
    if scope["type"] != "http" or scope["path"] != "/bench/publish":
        return False
    query = urllib.parse.parse_qs(scope["query_string"].decode())
    count = int(query.get("count", ["1"])[0])
    rate = float(query.get("rate", ["0"])[0])
    topics = int(query.get("topics", ["0"])[0])
    burst = int(query.get("burst", ["0"])[0])
    task = asyncio.ensure_future(paced(count, rate, publish_one, topics, burst))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b"started\n"})
    return True


def payload_text(number: int, sent_at: float) -> str:
    """The benchmark payload: the load client reads ``t`` without decoding JSON."""
    return f'{{"n":{number},"t":{sent_at:.6f}}}'
