"""
channels-redis's private parts: its key layout, read by publisher backpressure
(:mod:`broadcast.backpressure`), and the Redis hosts the send lock shares.
"""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings

from ..servers.base import Proven, Verdict, probe

# The versions CI installs on its oldest and newest legs (ci/constraints-*.txt).
PROVEN = (Proven("channels-redis", "4.3", "5"), Proven("redis", "5", "9"))
# The core layer's private method for a group's key, and its public name helpers.
LAYER_NAMES = ("_group_key", "non_local_name", "prefix", "hosts")

# This process's probe answer: None until the first client (or publish) asks.
verdict: Verdict | None = None


def is_core(layer: Any) -> bool:
    """Whether ``layer`` is channels-redis's core layer (imported, if it is in use)."""
    core = sys.modules.get("channels_redis.core")
    return core is not None and isinstance(layer, core.RedisChannelLayer)


def key_layout_known(layer: Any) -> bool:
    """Whether the core layer's keys can be read here; probed once a process."""
    global verdict
    if verdict is None:
        verdict = probe(
            "channels-redis backpressure",
            PROVEN,
            lambda: (
                f"RedisChannelLayer.{name}" for name in LAYER_NAMES if not hasattr(layer, name)
            ),
        )
    return verdict.safe


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
