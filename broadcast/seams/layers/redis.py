"""
channels-redis's private parts: its key layout, read by publisher backpressure
(:mod:`broadcast.publishing.backpressure`); the Redis hosts the send lock shares; and taking
every message queued for a relay in one round trip (:func:`take_queued`), where the
core layer's own receive takes one message per four.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.conf import settings

from broadcast.seams.servers.base import Probed, Proven, probe

logger = logging.getLogger(__name__)

# The versions CI installs on its oldest and newest legs (ci/constraints-*.txt).
PROVEN = (Proven("channels-redis", "4.3", "5"), Proven("redis", "5", "9"))
# The core layer's private method for a group's key, and its public name helpers.
LAYER_NAMES = ("_group_key", "non_local_name", "prefix", "hosts")

# What taking queued messages at once reads: the layer's receive state (so as never to
# race its own receive), its connections, and its message format.
TAKE_NAMES = (
    "receive_count", "receive_buffer", "connection", "consistent_hash", "deserialize",
    "serialize", "non_local_name", "prefix", "expiry",
)  # fmt: skip

# This process's probe answers, by seam: asked once, by the first client or publish.
probes: dict[str, Probed] = {}


def is_core(layer: Any) -> bool:
    """Whether ``layer`` is channels-redis's core layer (imported, if it is in use)."""
    core = sys.modules.get("channels_redis.core")
    return core is not None and isinstance(layer, core.RedisChannelLayer)


def key_layout_known(layer: Any) -> bool:
    """Whether the core layer's keys can be read here."""
    return _probed("channels-redis backpressure", LAYER_NAMES, layer)


def can_take_queued(layer: Any) -> bool:
    """Whether :func:`take_queued` may read ``layer`` (the core layer)."""
    return is_core(layer) and _probed("channels-redis batched receive", TAKE_NAMES, layer)


def _probed(seam: str, names: tuple[str, ...], layer: Any) -> bool:
    """Whether the layer has ``names`` and channels-redis is proven; once a process."""
    probed = probes.get(seam)
    if probed is None:
        probed = probes[seam] = probe(
            seam,
            PROVEN,
            lambda: (f"RedisChannelLayer.{name}" for name in names if not hasattr(layer, name)),
        )
    return probed.safe


async def take_queued(layer: Any, channel: str, limit: int) -> list[dict[str, Any]]:
    """
    Up to ``limit`` messages for the process-local ``channel`` that the core layer
    already holds, oldest first, in one round trip (``ZPOPMIN`` with a count). None
    at all while another receive of the layer is under way in this process: it may be
    taking from the same queue, and its messages would then arrive out of order with
    these. Messages for this process's other channels on that queue go back to Redis.
    """
    if layer.receive_count:
        return []
    taken: list[dict[str, Any]] = []
    buffered = layer.receive_buffer.get(channel)
    while buffered is not None and not buffered.empty() and len(taken) < limit:
        taken.append(buffered.get_nowait())  # taken from Redis earlier: older
    if taken:
        return taken
    connection = layer.connection(layer.consistent_hash(layer.non_local_name(channel)))
    key = queue_key(layer, channel)
    others: list[tuple[str, dict[str, Any], float]] = []
    for member, score in await connection.zpopmin(key, limit):
        message = layer.deserialize(member)
        # One channel, or (a group send to several of this process's) a list of them.
        targets = message.pop("__asgi_channel__", channel)
        for target in [targets] if isinstance(targets, str) else targets:
            if target == channel:
                taken.append(message)
            else:
                others.append((target, message, score))
    if others:
        await _give_back(layer, connection, key, others)
    return taken


async def _give_back(
    layer: Any, connection: Any, key: str, others: list[tuple[str, dict[str, Any], float]]
) -> None:
    """
    Return other channels' messages to the queue, where they were. A receive of the
    layer may have begun while they were taken, and it waits in Redis for the queue's
    next message: in this process's buffer, they would wait with it until one came.
    """
    members = {
        layer.serialize({**message, "__asgi_channel__": target}): score
        for target, message, score in others
    }
    try:
        async with connection.pipeline(transaction=True) as pipe:
            pipe.zadd(key, members)
            pipe.expire(key, int(layer.expiry))
            await pipe.execute()
    except Exception as exc:
        # Taken off Redis already: the buffer is where a receive begun later finds them.
        logger.warning("Could not return %d message(s) to Redis (%s)", len(others), exc)
        for target, message, _score in others:
            layer.receive_buffer[target].put_nowait(message)


def group_key(layer: Any, group: str) -> bytes:
    """The sorted set of a group's members (channel name -> when it was added)."""
    key: bytes = layer._group_key(group)
    return key


def queue_key(layer: Any, channel: str) -> str:
    """The sorted set of messages queued for a process-local channel's process."""
    return str(layer.prefix + layer.non_local_name(channel))


def hosts_of(layer: Any, alias: str) -> list[dict[str, Any]] | None:
    """
    The Redis hosts of a channels-redis layer (core or pub/sub) as channels-redis
    decodes them, else None: the core layer's public ``hosts``, or the settings'.
    """
    if not type(layer).__module__.startswith("channels_redis"):
        return None
    hosts = vars(layer).get("hosts")  # not getattr: the pub/sub layer proxies it per loop
    if isinstance(hosts, list):
        return hosts
    from channels_redis.utils import decode_hosts

    layers: dict[str, Any] = getattr(settings, "CHANNEL_LAYERS", {})
    config = layers.get(alias, {}).get("CONFIG", {})
    decoded: list[dict[str, Any]] = decode_hosts(config.get("hosts"))
    return decoded
