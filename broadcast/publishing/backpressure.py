"""
Publisher backpressure on channels-redis (core): a publisher waits while a live
relay has BROADCAST_MAX_RELAY_BACKLOG or more broadcasts still queued in Redis.

Without it, a publisher in another process outruns the fan-out: broadcasts queue
in Redis (latency grows with the queue), and past the layer's ``capacity``
channels-redis drops them with only an INFO log line in the publisher. With it,
a burst of publishes is paced to what the slowest live relay delivers, which costs
the publisher nothing it would not have waited for anyway: a relay takes
milliseconds per broadcast, a check takes one Redis round trip.

A relay is *live* while its group membership is fresh (each relay renews it every
heartbeat) and its oldest queued broadcast is younger than
RELAY_STALL_SECONDS. A process that was killed, or whose event loop is
stuck, stops being waited for after that long; its own clients are cut off from it
anyway and resume from history when they reconnect elsewhere.

This reads channels-redis's key layout (the group's sorted set of members, one
sorted set of queued messages per process-local channel prefix) through its seam,
:mod:`broadcast.seams.layers.redis`, whose probe turns backpressure off, with a warning,
on a channels-redis it does not know.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from broadcast.conf import conf
from broadcast.seams.layers import redis as redis_layer

logger = logging.getLogger(__name__)

# Relay key -> when it was last reported stalled: one warning a minute, not one per
# publish, for a process that is gone.
_reported: dict[str, float] = {}
REPORT_EVERY_SECONDS = 60.0
# How long publishers wait for a relay that stays behind before ignoring it.
RELAY_STALL_SECONDS = 2.0


def applies_to(layer: Any) -> bool:
    """Only channels-redis core on one Redis host queues per relay where we can see it."""
    return (
        redis_layer.is_core(layer) and redis_layer.key_layout_known(layer) and len(layer.hosts) == 1
    )


def relay_backlogs(client: Any, layer: Any, now: float) -> dict[str, tuple[int, float]]:
    """Each live-by-membership relay's (queued count, age of its oldest in seconds)."""
    window = conf.live_window
    group_key = redis_layer.group_key(layer, conf.BROADCAST_GROUP)
    members = client.zrangebyscore(group_key, now - window, "+inf")
    keys = [redis_layer.queue_key(layer, member.decode()) for member in members]
    if not keys:
        return {}
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.zcard(key)
        pipe.zrange(key, 0, 0, withscores=True)
    replies = pipe.execute()
    backlogs = {}
    for index, key in enumerate(keys):
        count, oldest = replies[2 * index], replies[2 * index + 1]
        backlogs[key] = (count, now - oldest[0][1] if oldest else 0.0)
    return backlogs


def wait_for_relays(client: Any, layer: Any, budget: float | None = None) -> float:
    """
    Block until no live relay has BROADCAST_MAX_RELAY_BACKLOG broadcasts queued, or
    for ``budget`` seconds at most; returns the seconds waited. Never raises for a
    slow relay: one that stays behind for RELAY_STALL_SECONDS is no longer
    waited for.
    """
    limit = conf.BROADCAST_MAX_RELAY_BACKLOG
    if limit is None:
        return 0.0
    stall = RELAY_STALL_SECONDS
    started = time.monotonic()
    delay = 0.001
    while True:
        behind = []
        for key, (count, age) in relay_backlogs(client, layer, time.time()).items():
            if count < limit:
                continue
            if age >= stall:
                if time.monotonic() - _reported.get(key, -REPORT_EVERY_SECONDS) >= (
                    REPORT_EVERY_SECONDS
                ):
                    logger.warning(
                        "Relay %s has %s broadcasts queued, the oldest %.1fs old: stalled "
                        "or gone; not waiting for it",
                        key,
                        count,
                        age,
                    )
                    _reported[key] = time.monotonic()
                continue
            behind.append(count)
        waited = time.monotonic() - started
        if not behind or (budget is not None and waited >= budget):
            return waited
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
