"""System checks for the app's settings (ids ``broadcast.E001`` onwards)."""

from __future__ import annotations

from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .conf import Settings, conf
from .layers.redis import hosts_of


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Each setting against the rule it is declared with (:mod:`broadcast.conf`)."""
    errors: list[Error] = []
    for setting in Settings.declared():
        value = getattr(conf, setting.name)
        if not setting.rule.test(value):
            errors.append(
                Error(
                    f"{setting.name} must {setting.rule.must}, got {value!r}.",
                    id=setting.rule.error_id,
                )
            )
    layers = getattr(settings, "CHANNEL_LAYERS", {})
    alias = conf.BROADCAST_CHANNEL_LAYER
    if isinstance(alias, str) and alias not in layers:
        errors.append(
            Error(
                f"BROADCAST_CHANNEL_LAYER is {alias!r}, which is not a key of "
                f"CHANNEL_LAYERS ({sorted(layers)!r}).",
                hint="Configure a channel layer; see the README's Settings section.",
                id="broadcast.E002",
            )
        )
    retention = conf.BROADCAST_RETENTION_DAYS
    if (
        Settings.BROADCAST_RETENTION_DAYS.rule.test(retention)
        and Settings.BROADCAST_HISTORY_TTL.rule.test(conf.BROADCAST_HISTORY_TTL)
        and conf.cuts_into_history(retention)
    ):
        errors.append(
            Error(
                f"BROADCAST_RETENTION_DAYS ({retention}) keeps broadcasts for less than "
                f"BROADCAST_HISTORY_TTL ({conf.BROADCAST_HISTORY_TTL} s): pruning would cut "
                "into resumable history.",
                id="broadcast.E020",
            )
        )
    return errors


@register(Tags.compatibility)
def check_send_lock(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Ids stay in delivery order across processes only with a lock they all share."""
    try:
        layer = get_channel_layer(conf.BROADCAST_CHANNEL_LAYER)
    except Exception:  # reported by check_settings (E002) or by the layer itself
        return []
    if (
        layer is None
        or isinstance(layer, InMemoryChannelLayer)
        or hosts_of(layer, conf.BROADCAST_CHANNEL_LAYER)
    ):
        return []
    return [
        Warning(
            f"The send lock cannot reach a channel layer of type {type(layer).__name__}: "
            "publishers in different processes may deliver ids out of order.",
            hint="Use channels-redis (core or pub/sub), or publish from one process.",
            id="broadcast.W001",
        )
    ]
