"""System checks for the app's settings (ids ``broadcast.E001`` onwards)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.urls import NoReverseMatch, reverse

from broadcast.conf import REMOVED, Settings, conf
from broadcast.seams.layers.redis import hosts_of
from broadcast.stream.layer import QUICK_START, is_process_local, load_layer


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Each setting against the rule it is declared with (:mod:`broadcast.conf`)."""
    errors: list[Error] = []
    for setting in Settings.declared():
        value = getattr(conf, setting.name)
        if not setting.rule.test(value):
            errors.append(
                Error(
                    f"{setting.name} must {setting.rule.must}, got {setting.shown(value)}.",
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
                hint=f"Add a channel layer to CHANNEL_LAYERS: {QUICK_START}.",
                id="broadcast.E002",
            )
        )
    elif isinstance(alias, str):
        try:
            load_layer()
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), id="broadcast.E024"))
    if Settings.BROADCAST_TOPIC_AUTHORIZER.rule.test(conf.BROADCAST_TOPIC_AUTHORIZER):
        from broadcast.clients.authorizer import authorizer

        try:
            authorizer()
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), id="broadcast.E028"))
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
def check_removed_settings(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """A setting that no longer exists does nothing: say so, and what took its place."""
    return [
        Warning(
            f"{name} is no longer a setting and is ignored: {instead}.",
            hint=f"Remove {name} from your settings (docs/settings.md, removed settings).",
            id="broadcast.W005",
        )
        for name, instead in REMOVED.items()
        if hasattr(settings, name)
    ]


@register(Tags.compatibility)
def check_send_lock(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Ids stay in delivery order across processes only with a lock they all share."""
    try:
        layer = load_layer()
    except ImproperlyConfigured:  # reported by check_settings (E002, E024)
        return []
    if is_process_local(layer) or hosts_of(layer, conf.BROADCAST_CHANNEL_LAYER):
        return []
    return [
        Warning(
            f"The send lock cannot reach a channel layer of type {type(layer).__name__}: "
            "publishers in different processes may deliver ids out of order.",
            hint="Use channels-redis (core or pub/sub), or publish from one process.",
            id="broadcast.W001",
        )
    ]


@register(Tags.security, deploy=True)
def check_deployment(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """What ``check --deploy`` should say about the hub in production."""
    warnings: list[CheckMessage] = []
    metrics_public = conf.BROADCAST_METRICS_ENABLED and conf.BROADCAST_METRICS_TOKEN is None
    if metrics_public and _routed("broadcast-metrics"):
        warnings.append(
            Warning(
                "/metrics is served to anyone: it has no BROADCAST_METRICS_TOKEN.",
                hint="Set BROADCAST_METRICS_TOKEN (Prometheus sends it as a bearer "
                "token), or BROADCAST_METRICS_ENABLED = False.",
                id="broadcast.W002",
            )
        )
    if conf.BROADCAST_HEALTHZ_ENABLED and _routed("broadcast-healthz"):
        warnings.append(
            Warning(
                "/healthz is served to anyone: it tells the live connection count and the "
                "channel layer's backend.",
                hint="Allow it to your load balancer only (at the proxy), then add "
                "'broadcast.W003' to SILENCED_SYSTEM_CHECKS; or BROADCAST_HEALTHZ_ENABLED "
                "= False.",
                id="broadcast.W003",
            )
        )
    try:
        process_local = is_process_local(load_layer())
    except ImproperlyConfigured:  # an error of check_settings already
        process_local = False
    if process_local:
        warnings.append(
            Warning(
                "The in-memory channel layer serves one server process only: a second "
                "process refuses to start, and manage.py broadcast cannot reach clients.",
                hint="Use channels_redis.core.RedisChannelLayer in CHANNEL_LAYERS "
                "(docs/operations.md), or add 'broadcast.W004' to SILENCED_SYSTEM_CHECKS "
                "if one process is all you run.",
                id="broadcast.W004",
            )
        )
    return warnings


def _routed(name: str) -> bool:
    """Whether the project's URLconf serves the named view (``broadcast.urls`` included)."""
    try:
        reverse(name)
    except NoReverseMatch:
        return False
    return True
