"""
A real-time broadcast hub for Django Channels.

    from broadcast import publish
    publish("announcement", {"text": "Deploy at 18:00"})
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BroadcastError",
    "InvalidBroadcast",
    "InvalidPayload",
    "InvalidTopic",
    "InvalidType",
    "PayloadTooLarge",
    "PublishFailed",
    "apublish",
    "apublish_to_user",
    "connect_token",
    "publish",
    "publish_to_user",
]

_LAZY = {
    "publish": "publishing.api",
    "apublish": "publishing.api",
    "publish_to_user": "publishing.api",
    "apublish_to_user": "publishing.api",
    "PublishFailed": "publishing.api",
    "connect_token": "clients.tokens",
    "BroadcastError": "protocol",
    "InvalidBroadcast": "protocol",
    "InvalidPayload": "protocol",
    "InvalidTopic": "protocol",
    "InvalidType": "protocol",
    "PayloadTooLarge": "protocol",
}


def __getattr__(name: str) -> Any:
    # Imported lazily: ``publish`` needs models, which cannot load before the app
    # registry, and ``import broadcast`` must work in settings and INSTALLED_APPS.
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
