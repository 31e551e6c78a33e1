"""
The app's settings: flat ``BROADCAST_*`` names in the Django settings.

Values are cached after the first read and the cache is dropped on Django's
``setting_changed`` signal, so ``override_settings`` still works. The cache is
there because the connect path reads several settings that are usually unset, and
``getattr(settings, name, default)`` pays for an AttributeError on each of those
(about 7 us a read, measured; a fifth of the hub's own connect cost). Bad values
are reported by the system checks in :mod:`broadcast.checks`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    "BROADCAST_GROUP": "broadcast",
    "BROADCAST_CHANNEL_LAYER": "default",
    "BROADCAST_MAX_MESSAGE_BYTES": 64 * 1024,
    "BROADCAST_MAX_PENDING_BYTES": 1024 * 1024,
    "BROADCAST_HEARTBEAT_SECONDS": 5.0,
    "BROADCAST_STALE_HEARTBEATS": 3,
    "BROADCAST_SEND_LOCK_TIMEOUT": 10.0,
    "BROADCAST_REQUIRE_AUTH": False,
    "BROADCAST_HISTORY_LIMIT": 1000,
    "BROADCAST_HISTORY_TTL": 24 * 60 * 60,
    "BROADCAST_MAX_INCOMING_BYTES": 4096,
    "BROADCAST_MAX_INCOMING_RATE": 10.0,
    "BROADCAST_MAX_CONNECTIONS": None,
    "BROADCAST_SHUTDOWN_TIMEOUT": 10.0,
    "BROADCAST_SAMPLE_SECONDS": 60.0,
    "BROADCAST_MAX_RELAY_BACKLOG": 1,
    "BROADCAST_RELAY_STALL_SECONDS": 2.0,
    "BROADCAST_RETENTION_DAYS": 30,
    "BROADCAST_METRICS_ENABLED": True,
    "BROADCAST_METRICS_TOKEN": None,
    "BROADCAST_HEALTHZ_ENABLED": True,
}


class Settings:
    """Typed access to the app's settings, with their defaults."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def _get(self, name: str) -> Any:
        try:
            return self._cache[name]
        except KeyError:
            value = self._cache[name] = getattr(settings, name, DEFAULTS[name])
            return value

    def reload(self, **kwargs: Any) -> None:
        self._cache.clear()

    @property
    def BROADCAST_GROUP(self) -> str:
        """The channel-layer group every server process's relay joins."""
        return self._get("BROADCAST_GROUP")

    @property
    def BROADCAST_CHANNEL_LAYER(self) -> str:
        """The alias in CHANNEL_LAYERS that carries broadcasts between processes."""
        return self._get("BROADCAST_CHANNEL_LAYER")

    @property
    def BROADCAST_MAX_MESSAGE_BYTES(self) -> int:
        """Largest serialised envelope, in UTF-8 bytes, that publish() accepts."""
        return self._get("BROADCAST_MAX_MESSAGE_BYTES")

    @property
    def BROADCAST_MAX_PENDING_BYTES(self) -> int:
        """Bytes queued for one client before it is dropped as a slow client."""
        return self._get("BROADCAST_MAX_PENDING_BYTES")

    @property
    def BROADCAST_HEARTBEAT_SECONDS(self) -> float:
        """How often each server process writes its connection-count row."""
        return self._get("BROADCAST_HEARTBEAT_SECONDS")

    @property
    def BROADCAST_STALE_HEARTBEATS(self) -> int:
        """Missed heartbeats after which a process no longer counts as live."""
        return self._get("BROADCAST_STALE_HEARTBEATS")

    @property
    def BROADCAST_SEND_LOCK_TIMEOUT(self) -> float:
        """Seconds a publisher waits for the send lock that keeps ids in order."""
        return self._get("BROADCAST_SEND_LOCK_TIMEOUT")

    @property
    def BROADCAST_REQUIRE_AUTH(self) -> bool:
        """Refuse WebSocket clients that are not logged in (403 at the handshake)."""
        return self._get("BROADCAST_REQUIRE_AUTH")

    @property
    def BROADCAST_HISTORY_LIMIT(self) -> int:
        """Most broadcasts replayed to one resuming client; beyond it, hub.reset."""
        return self._get("BROADCAST_HISTORY_LIMIT")

    @property
    def BROADCAST_HISTORY_TTL(self) -> float:
        """Seconds a broadcast stays replayable; an older gap gets hub.reset."""
        return self._get("BROADCAST_HISTORY_TTL")

    @property
    def BROADCAST_MAX_INCOMING_BYTES(self) -> int:
        """Largest text frame a client may send; larger ones close with 1009."""
        return self._get("BROADCAST_MAX_INCOMING_BYTES")

    @property
    def BROADCAST_MAX_INCOMING_RATE(self) -> float:
        """Frames per second a client may send (bursts of twice that); more: 1008."""
        return self._get("BROADCAST_MAX_INCOMING_RATE")

    @property
    def BROADCAST_MAX_CONNECTIONS(self) -> int | None:
        """Clients one server process accepts; the excess is closed with 1013."""
        return self._get("BROADCAST_MAX_CONNECTIONS")

    @property
    def BROADCAST_SHUTDOWN_TIMEOUT(self) -> float:
        """Seconds a stopping server takes to close its clients with 1012 (paced)."""
        return self._get("BROADCAST_SHUTDOWN_TIMEOUT")

    @property
    def BROADCAST_MAX_RELAY_BACKLOG(self) -> int | None:
        """Broadcasts a relay may have queued in Redis before publishers wait; None: off."""
        return self._get("BROADCAST_MAX_RELAY_BACKLOG")

    @property
    def BROADCAST_RELAY_STALL_SECONDS(self) -> float:
        """How long publishers wait for a relay that is behind before ignoring it."""
        return self._get("BROADCAST_RELAY_STALL_SECONDS")

    @property
    def BROADCAST_SAMPLE_SECONDS(self) -> float:
        """How often each process records its connection count for the dashboard chart."""
        return self._get("BROADCAST_SAMPLE_SECONDS")

    @property
    def BROADCAST_RETENTION_DAYS(self) -> float:
        """Days `manage.py prunehub` keeps broadcasts, samples and stopped process rows."""
        return self._get("BROADCAST_RETENTION_DAYS")

    @property
    def BROADCAST_METRICS_ENABLED(self) -> bool:
        """Serve /metrics (Prometheus text format); off: 404."""
        return self._get("BROADCAST_METRICS_ENABLED")

    @property
    def BROADCAST_METRICS_TOKEN(self) -> str | None:
        """When set, /metrics needs the header ``Authorization: Bearer <token>``."""
        return self._get("BROADCAST_METRICS_TOKEN")

    @property
    def BROADCAST_HEALTHZ_ENABLED(self) -> bool:
        """Serve /healthz (JSON; 503 when the database or channel layer is down)."""
        return self._get("BROADCAST_HEALTHZ_ENABLED")


conf = Settings()
setting_changed.connect(conf.reload)
