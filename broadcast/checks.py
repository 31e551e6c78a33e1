"""System checks for the app's settings (ids ``broadcast.E001`` onwards)."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .conf import conf

# Channels accepts group names of ASCII letters, digits, hyphens, underscores and
# periods, shorter than 100 characters.
GROUP_NAME_RE = re.compile(r"^[a-zA-Z0-9_.\-]{1,99}$")


def _positive_number(value: Any, *, integer: bool) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and value > 0


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors: list[Error] = []
    group = conf.BROADCAST_GROUP
    if not isinstance(group, str) or not GROUP_NAME_RE.match(group):
        errors.append(
            Error(
                f"BROADCAST_GROUP must be 1-99 characters of letters, digits, '-', '_' "
                f"or '.', got {group!r}.",
                id="broadcast.E001",
            )
        )
    layers = getattr(settings, "CHANNEL_LAYERS", {})
    alias = conf.BROADCAST_CHANNEL_LAYER
    if alias not in layers:
        errors.append(
            Error(
                f"BROADCAST_CHANNEL_LAYER is {alias!r}, which is not a key of "
                f"CHANNEL_LAYERS ({sorted(layers)!r}).",
                hint="Configure a channel layer; see the README's Settings section.",
                id="broadcast.E002",
            )
        )
    for name, integer, error_id in [
        ("BROADCAST_MAX_MESSAGE_BYTES", True, "broadcast.E003"),
        ("BROADCAST_MAX_PENDING_BYTES", True, "broadcast.E004"),
        ("BROADCAST_HEARTBEAT_SECONDS", False, "broadcast.E005"),
        ("BROADCAST_STALE_HEARTBEATS", True, "broadcast.E006"),
        ("BROADCAST_SEND_LOCK_TIMEOUT", False, "broadcast.E007"),
        ("BROADCAST_HISTORY_LIMIT", True, "broadcast.E009"),
        ("BROADCAST_HISTORY_TTL", False, "broadcast.E010"),
        ("BROADCAST_MAX_INCOMING_BYTES", True, "broadcast.E011"),
        ("BROADCAST_MAX_INCOMING_RATE", False, "broadcast.E012"),
        ("BROADCAST_SHUTDOWN_TIMEOUT", False, "broadcast.E014"),
        ("BROADCAST_SAMPLE_SECONDS", False, "broadcast.E015"),
        ("BROADCAST_RETENTION_DAYS", False, "broadcast.E016"),
        ("BROADCAST_RELAY_STALL_SECONDS", False, "broadcast.E022"),
    ]:
        value = getattr(conf, name)
        if not _positive_number(value, integer=integer):
            kind = "a positive integer" if integer else "a positive number"
            errors.append(Error(f"{name} must be {kind}, got {value!r}.", id=error_id))
    for name, error_id in [
        ("BROADCAST_MAX_CONNECTIONS", "broadcast.E013"),
        ("BROADCAST_MAX_RELAY_BACKLOG", "broadcast.E021"),
    ]:
        value = getattr(conf, name)
        if value is not None and not _positive_number(value, integer=True):
            errors.append(
                Error(f"{name} must be None or a positive integer, got {value!r}.", id=error_id)
            )
    for name, error_id in [
        ("BROADCAST_REQUIRE_AUTH", "broadcast.E008"),
        ("BROADCAST_METRICS_ENABLED", "broadcast.E017"),
        ("BROADCAST_HEALTHZ_ENABLED", "broadcast.E018"),
    ]:
        value = getattr(conf, name)
        if not isinstance(value, bool):
            errors.append(Error(f"{name} must be True or False, got {value!r}.", id=error_id))
    token = conf.BROADCAST_METRICS_TOKEN
    if token is not None and not (isinstance(token, str) and token):
        errors.append(
            Error(
                f"BROADCAST_METRICS_TOKEN must be None or a non-empty string, got {token!r}.",
                id="broadcast.E019",
            )
        )
    retention = conf.BROADCAST_RETENTION_DAYS
    ttl = conf.BROADCAST_HISTORY_TTL
    if (
        _positive_number(retention, integer=False)
        and _positive_number(ttl, integer=False)
        and retention * 86400 < ttl
    ):
        errors.append(
            Error(
                f"BROADCAST_RETENTION_DAYS ({retention}) keeps broadcasts for less than "
                f"BROADCAST_HISTORY_TTL ({ttl} s): pruning would cut into resumable history.",
                id="broadcast.E020",
            )
        )
    return errors


@register(Tags.compatibility)
def check_send_lock(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Ids stay in delivery order across processes only with a lock they all share."""
    from channels.layers import InMemoryChannelLayer, get_channel_layer

    from .sendlock import redis_hosts

    try:
        layer = get_channel_layer(conf.BROADCAST_CHANNEL_LAYER)
    except Exception:  # reported by check_settings (E002) or by the layer itself
        return []
    if layer is None or isinstance(layer, InMemoryChannelLayer) or redis_hosts(layer):
        return []
    return [
        Warning(
            f"The send lock cannot reach a channel layer of type {type(layer).__name__}: "
            "publishers in different processes may deliver ids out of order.",
            hint="Use channels-redis (core or pub/sub), or publish from one process.",
            id="broadcast.W001",
        )
    ]
