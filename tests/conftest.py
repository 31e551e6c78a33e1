from __future__ import annotations

import os

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from django.db import connections

from broadcast.stream.hub import running_hub

# A database of its own, so that tests never touch a developer's data in db 0.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def redis_layers(url: str = TEST_REDIS_URL, backend: str = "core.RedisChannelLayer") -> dict:
    return {
        "default": {
            "BACKEND": f"channels_redis.{backend}",
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": 30}]},
        }
    }


@pytest.fixture(autouse=True)
def _fresh_channel_layers(settings):
    """Every test starts on a new in-memory layer unless it asks for Redis."""
    settings.CHANNEL_LAYERS = IN_MEMORY
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
async def hub():
    """The running loop's process hub, closed (relay and heartbeat stopped) after."""
    from broadcast.stream.hub import get_hub

    instance = get_hub()
    yield instance
    await instance.close()


@pytest.fixture(autouse=True)
async def _close_hub_after_test():
    yield
    instance = running_hub()
    if instance is not None:
        await instance.close()
    # Django's async ORM runs queries on asgiref's thread-sensitive thread, whose
    # connection nothing else closes (PostgreSQL then refuses to drop the test DB).
    await sync_to_async(connections.close_all)()


@pytest.fixture
def redis_url() -> str:
    """The test Redis, flushed. Fails (never skips) when Redis does not answer."""
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        pytest.fail(
            f"Redis is not answering at {TEST_REDIS_URL} ({exc}). Start it with: "
            "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"
        )
    client.flushdb()
    yield TEST_REDIS_URL
    client.close()


@pytest.fixture
def unreachable_layer(settings):
    """A channels-redis layer pointed at a port where nothing listens."""
    settings.CHANNEL_LAYERS = redis_layers("redis://127.0.0.1:1/0")
    channel_layers.backends.clear()


@pytest.fixture
def redis_layer(settings, redis_url):
    settings.CHANNEL_LAYERS = redis_layers(redis_url)
    channel_layers.backends.clear()
    return redis_url


@pytest.fixture
def pubsub_layer(settings, redis_url):
    settings.CHANNEL_LAYERS = redis_layers(redis_url, "pubsub.RedisPubSubChannelLayer")
    channel_layers.backends.clear()
    return redis_url
