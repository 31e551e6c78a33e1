"""
The out-of-process publisher: ``apublish`` over REDIS_URL from its own process, at
the same pace as the in-process one.

    python -m bench.publisher COUNT RATE [TOPICS [BURST]]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsite.settings")
    django.setup()
    from harness.constants import apply

    apply()  # the app variant's HUB_CONSTANTS, as its servers have them
    from bench.control import paced, payload_text
    from broadcast import apublish

    persist = os.environ.get("BENCH_PERSIST", "0") == "1"
    count, rate = int(sys.argv[1]), float(sys.argv[2])
    topics = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    burst = int(sys.argv[4]) if len(sys.argv) > 4 else 0

    async def publish_one(number: int, sent_at: float, topic: str | None) -> None:
        payload = json.loads(payload_text(number, sent_at))
        await apublish("bench", payload, topic=topic, persist=persist)

    asyncio.run(paced(count, rate, publish_one, topics, burst))


if __name__ == "__main__":
    main()
