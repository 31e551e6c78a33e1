"""
The send lock: one publisher at a time assigns the next delivery id and sends.

Delivery ids must reach clients in id order, or a client that resumes "after 11"
never sees a 10 that was sent late. Holding this lock from "assign the id and
commit it" to "group_send done" makes the order in which ids are assigned the
order in which they are sent, across every publisher that shares the hub:

- in-memory layer: every publisher is in this process, so a threading lock;
- Redis layer: publishers live in many processes, so a Redis lock (redis-py's
  ``Lock``, with an expiry in case its holder dies) on the layer's own server.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import redis
from django.core.exceptions import ImproperlyConfigured

from .conf import conf

LOCK_NAME = "broadcast:send-lock"
# A holder that dies keeps the lock at most this long; sends take milliseconds.
LOCK_EXPIRY_SECONDS = 30

_local_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


class SendLockTimeout(TimeoutError):
    pass


def redis_hosts(layer: Any) -> list[dict[str, Any]] | None:
    """The Redis hosts of a channels-redis layer (core or pub/sub), else None."""
    if not type(layer).__module__.startswith("channels_redis"):
        return None
    from channels_redis.utils import decode_hosts

    hosts = layer.__dict__.get("hosts")  # core; the pub/sub proxy keeps its kwargs
    if hosts is None:
        hosts = decode_hosts(layer.__dict__.get("_kwargs", {}).get("hosts"))
    return hosts


def redis_client(layer: Any) -> redis.Redis | None:
    """A sync Redis client on the layer's first host, or None for a non-Redis layer."""
    hosts = redis_hosts(layer)
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
    if "address" in host:
        return redis.Redis.from_url(host.pop("address"), **host)
    if "master_name" in host:
        from redis.sentinel import Sentinel

        master = host.pop("master_name")
        sentinel = Sentinel(
            host.pop("sentinels"), sentinel_kwargs=host.pop("sentinel_kwargs", None)
        )
        return sentinel.master_for(master, **host)
    if "host" in host:
        return redis.Redis(**host)
    raise ImproperlyConfigured(
        f"Cannot derive a Redis connection from channel layer host {host!r}."
    )


@contextlib.contextmanager
def send_lock(layer: Any) -> Iterator[None]:
    """Hold the hub-wide send lock; raises SendLockTimeout or redis errors."""
    timeout = conf.BROADCAST_SEND_LOCK_TIMEOUT
    client = redis_client(layer)
    if client is None:
        if not _local_lock.acquire(timeout=timeout):
            raise SendLockTimeout(f"Timed out after {timeout}s waiting for the send lock.")
        try:
            yield
        finally:
            _local_lock.release()
        return
    lock = client.lock(LOCK_NAME, timeout=LOCK_EXPIRY_SECONDS, blocking_timeout=timeout)
    if not lock.acquire():
        raise SendLockTimeout(f"Timed out after {timeout}s waiting for the send lock in Redis.")
    try:
        yield
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()
