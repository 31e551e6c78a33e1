"""
The hub under test: hubsite's ASGI application, plus the benchmark's control route
that publishes through the public API (``apublish``) inside the server process.
"""

from __future__ import annotations

import json
import os

# hubsite.asgi sets up Django, which must happen before the app's modules import.
from hubsite.asgi import application as hub_application

# isort: split
from bench.control import handle, payload_text
from broadcast import apublish
from harness.constants import apply

apply()  # the app variant's HUB_CONSTANTS (APP_ENV in bench/run.py)

PERSIST = os.environ.get("BENCH_PERSIST", "0") == "1"


async def publish_one(number: int, sent_at: float, topic: str | None) -> None:
    payload = json.loads(payload_text(number, sent_at))
    await apublish("bench", payload, topic=topic, persist=PERSIST)


async def app(scope, receive, send):
    if await handle(scope, receive, send, publish_one):
        return
    await hub_application(scope, receive, send)
