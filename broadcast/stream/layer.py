"""
The channel layer the hub uses, and what to tell a user whose configuration of it
cannot work: one line each, naming the setting to change.
"""

from __future__ import annotations

from typing import Any

from channels.exceptions import InvalidChannelLayerError
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from broadcast.conf import conf

QUICK_START = "docs/quickstart.md, step 'The channel layer'"
REDIS_EXTRA = "pip install 'django-broadcast-hub[redis]'"


def load_layer() -> Any:
    """The configured channel layer; ``ImproperlyConfigured`` with one line if it cannot load."""
    alias = conf.BROADCAST_CHANNEL_LAYER
    try:
        layer = get_channel_layer(alias)
    except InvalidChannelLayerError as exc:
        raise ImproperlyConfigured(_why_not_loaded(alias, exc)) from exc
    except (TypeError, ValueError) as exc:  # the backend refused its CONFIG
        raise ImproperlyConfigured(
            f"CHANNEL_LAYERS[{alias!r}]['CONFIG'] does not suit its BACKEND: {exc}."
        ) from exc
    if layer is None:
        raise ImproperlyConfigured(
            f"CHANNEL_LAYERS has no {alias!r} layer, which the broadcast hub uses "
            f"(BROADCAST_CHANNEL_LAYER); add one: {QUICK_START}."
        )
    return layer


def _why_not_loaded(alias: str, exc: InvalidChannelLayerError) -> str:
    backend = getattr(settings, "CHANNEL_LAYERS", {}).get(alias, {}).get("BACKEND")
    cause = exc.__context__
    if backend and isinstance(cause, ImportError):
        hint = REDIS_EXTRA if str(backend).startswith("channels_redis") else "install it"
        return (
            f"CHANNEL_LAYERS[{alias!r}]['BACKEND'] is {backend!r}, which cannot be "
            f"imported ({cause}): {hint}."
        )
    return f"CHANNEL_LAYERS[{alias!r}] cannot be loaded: {exc}."


def is_process_local(layer: Any) -> bool:
    """True when the layer cannot reach any other process (the in-memory layer)."""
    return isinstance(layer, InMemoryChannelLayer)


def needs_shared_layer(what: str) -> str:
    """Why ``what`` cannot work on the in-memory layer, and the setting that fixes it."""
    alias = conf.BROADCAST_CHANNEL_LAYER
    advice = (
        f"{what}: the in-memory channel layer reaches this process only. Set "
        f"CHANNEL_LAYERS[{alias!r}] to channels_redis.core.RedisChannelLayer ({REDIS_EXTRA}; "
        "docs/operations.md) for the servers and for this process"
    )
    return advice + "."
