"""
The send lock: one publisher at a time assigns the next delivery id and sends.

Delivery ids must reach clients in id order, or a client that resumes "after 11"
never sees a 10 that was sent late. Holding this lock from "assign the id and
commit it" to "group_send done" makes the order in which ids are assigned the
order in which they are sent, across every publisher that shares the hub:

- in-memory layer: every publisher is in this process, so a threading lock;
- Redis layer: publishers live in many processes, so a Redis lock (redis-py's
  ``Lock``, with an expiry in case its holder dies) on the layer's own server.

The lock expires LOCK_EXPIRY_SECONDS after it is taken, so everything done under it
is bounded by a deadline short of that (:class:`Held`): a stalled Redis (``CLIENT
PAUSE``, a failover) or database makes the publish fail and be recorded, never
outlive the lock and send an id after a later one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from broadcast.conf import conf
from broadcast.seams.layers import redis as redis_layer

if TYPE_CHECKING:  # redis-py comes with channels-redis, the only layer that needs it
    import redis

LOCK_NAME = "broadcast:send-lock"
# How long a publisher waits for the lock before its publish fails.
SEND_LOCK_TIMEOUT_SECONDS = 10.0
# A holder that dies keeps the lock at most this long; sends take milliseconds. Under
# SEND_LOCK_TIMEOUT_SECONDS (10 s), so the next publisher gets it in time.
LOCK_EXPIRY_SECONDS = 8.0
# Left unused at the end of the expiry: the margin for the last step's own round trip.
LOCK_MARGIN_SECONDS = 1.0
# The lock's Redis commands (and backpressure's reads) must fail inside the expiry,
# whatever socket timeout the layer's own connections have.
LOCK_SOCKET_TIMEOUT = 3.0

_local_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


class SendLockTimeout(TimeoutError):
    pass


class SendLockLost(TimeoutError):
    """The work under the lock outlived its deadline; what was not sent stays unsent."""


class Held:
    """The send lock, held: how long is left, and whether it still is ours."""

    def __init__(self, lock: Any = None) -> None:
        self._lock = lock
        self._taken = time.monotonic()
        self._deadline = self._taken + LOCK_EXPIRY_SECONDS - LOCK_MARGIN_SECONDS

    def remaining(self) -> float:
        """Seconds left for work under the lock; raises SendLockLost when none are."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise SendLockLost("The send lock's deadline passed before the broadcast was sent.")
        return left

    def check(self) -> float:
        """``remaining()``, and for a Redis lock, that Redis still holds it for us."""
        left = self.remaining()
        if self._lock is not None and not self._lock.owned():
            raise SendLockLost(
                "The send lock expired in Redis before the broadcast was sent "
                f"({self._whereabouts()}, {time.monotonic() - self._taken:.2f}s after it was "
                "taken)."
            )
        return left

    def _whereabouts(self) -> str:
        """Where the lock went: gone (expired early, deleted) or taken by another holder."""
        try:
            left_ms = self._lock.redis.pttl(self._lock.name)
        except Exception as exc:
            return f"Redis did not say where it went: {exc}"
        if left_ms < 0:
            return "no longer in Redis"
        return f"held by another publisher for {left_ms} ms more"


def redis_client(layer: Any) -> redis.Redis | None:
    """A sync Redis client on the layer's first host, or None for a non-Redis layer."""
    hosts = redis_layer.hosts_of(layer, conf.BROADCAST_CHANNEL_LAYER)
    if not hosts:
        return None
    key = repr(sorted(hosts[0].items()))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _make_client(dict(hosts[0]))
            _clients[key] = client
        return client


def _make_client(host: dict[str, Any]) -> redis.Redis:
    # Same host forms as channels_redis.utils.create_pool, in redis-py's sync API.
    host.pop("max_connections", None)
    host["socket_timeout"] = min(
        host.get("socket_timeout") or LOCK_SOCKET_TIMEOUT, LOCK_SOCKET_TIMEOUT
    )
    import redis

    client: redis.Redis
    if "address" in host:
        client = redis.Redis.from_url(host.pop("address"), **host)
    elif "master_name" in host:
        from redis.sentinel import Sentinel

        master = host.pop("master_name")
        sentinel = Sentinel(
            host.pop("sentinels"), sentinel_kwargs=host.pop("sentinel_kwargs", None)
        )
        client = sentinel.master_for(master, **host)
    elif "host" in host:
        client = redis.Redis(**host)
    else:
        raise ImproperlyConfigured(
            f"Cannot derive a Redis connection from channel layer host {host!r}."
        )
    return client


@contextlib.contextmanager
def send_lock(layer: Any) -> Iterator[Held]:
    """Hold the hub-wide send lock; raises SendLockTimeout or redis errors."""
    timeout = SEND_LOCK_TIMEOUT_SECONDS
    client = redis_client(layer)
    if client is None:
        if not _local_lock.acquire(timeout=timeout):
            raise SendLockTimeout(f"Timed out after {timeout}s waiting for the send lock.")
        try:
            yield Held()
        finally:
            _local_lock.release()
        return
    lock = client.lock(LOCK_NAME, timeout=LOCK_EXPIRY_SECONDS, blocking_timeout=timeout)
    if not lock.acquire():
        raise SendLockTimeout(f"Timed out after {timeout}s waiting for the send lock in Redis.")
    try:
        yield Held(lock)
    finally:
        with contextlib.suppress(Exception):  # expired, or Redis away: it expires anyway
            lock.release()
