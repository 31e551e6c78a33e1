"""
The app's settings: flat ``BROADCAST_*`` names in the Django settings, each declared
once below with its default, its rule (checked by :mod:`broadcast.checks`, with the
error id given) and the line the settings reference shows.

Values are cached after the first read and the cache is dropped on Django's
``setting_changed`` signal, so ``override_settings`` still works. The connect path
reads several settings that are usually unset, and ``getattr(settings, name,
default)`` pays for an AttributeError on each of those.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

T = TypeVar("T")

# Channels accepts group names of ASCII letters, digits, hyphens, underscores and
# periods, shorter than 100 characters.
GROUP_NAME_RE = re.compile(r"\A[a-zA-Z0-9_.\-]{1,99}\Z")
# Heartbeats a process may miss before it no longer counts as live.
STALE_HEARTBEATS = 3
DOTTED_PATH_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")


# Settings that were removed, and what an operator who still sets one should know:
# system check broadcast.W005 says it.
REMOVED = {
    "BROADCAST_STALE_HEARTBEATS": "a process counts as live for 3 heartbeats "
    "(BROADCAST_HEARTBEAT_SECONDS)",
    "BROADCAST_SEND_LOCK_TIMEOUT": "publishers wait up to 10 s for the send lock",
    "BROADCAST_SAMPLE_SECONDS": "the connection-count chart is sampled once a minute",
    "BROADCAST_RELAY_STALL_SECONDS": "publishers stop waiting for a relay that stays "
    "behind for 2 s; BROADCAST_MAX_RELAY_BACKLOG = None turns the waiting off",
    "BROADCAST_COALESCE_MAX": "a relay writes up to 64 ready broadcasts to a client at once",
    "BROADCAST_PUBLISH_BATCHES": "ephemeral publishes pipelined together always travel "
    "as one pub/sub message; every process must run 0.4.6 or later",
    "BROADCAST_SWEEP_CHUNK": "a fan-out lets the loop run after every 64 clients",
}


@dataclass(frozen=True)
class Rule:
    """What a setting's value must be: ``test(value)``, or the error ``must`` describes."""

    must: str
    error_id: str

    def test(self, value: Any) -> bool:
        return RULES[self.must](value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


RULES: dict[str, Callable[[Any], bool]] = {
    "be a positive number": _number,
    "be a positive integer": _integer,
    "be None or a positive integer": lambda value: value is None or _integer(value),
    "be True or False": lambda value: isinstance(value, bool),
    "be None or a non-empty string": lambda value: (
        value is None or (isinstance(value, str) and bool(value))
    ),
    "be 1-99 characters of letters, digits, '-', '_' or '.'": lambda value: (
        isinstance(value, str) and bool(GROUP_NAME_RE.match(value))
    ),
    "be a string": lambda value: isinstance(value, str),
    "be a dotted path to a callable, e.g. 'myapp.topics.authorize'": lambda value: (
        isinstance(value, str) and bool(DOTTED_PATH_RE.match(value))
    ),
    "be a list of keys, each a string of at least 16 characters": lambda value: (
        isinstance(value, list | tuple)
        and all(isinstance(key, str) and len(key) >= 16 for key in value)
    ),
}


class Setting(Generic[T]):
    """One ``BROADCAST_*`` setting: its default, its rule and its one-line description."""

    name: str

    def __init__(
        self, default: T, must: str, error_id: str, doc: str, *, secret: bool = False
    ) -> None:
        self.default = default
        self.rule = Rule(must, error_id)
        self.doc = doc
        self.secret = secret  # its value never goes into a message

    def shown(self, value: Any) -> str:
        """The value as an error message may show it."""
        if not self.secret:
            return repr(value)
        if isinstance(value, list | tuple):
            return f"a {type(value).__name__} of {len(value)} value(s), not shown"
        return f"a {type(value).__name__}, not shown"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, instance: Settings, owner: type) -> T: ...
    def __get__(self, instance: Settings | None, owner: type) -> T | Setting[T]:
        if instance is None:
            return self
        try:
            value: T = instance.cache[self.name]
        except KeyError:
            value = instance.cache[self.name] = getattr(settings, self.name, self.default)
        return value


class Settings:
    """Typed access to the app's settings, with their defaults."""

    BROADCAST_GROUP = Setting[str](
        "broadcast", "be 1-99 characters of letters, digits, '-', '_' or '.'", "broadcast.E001",
        "The channel-layer group every server process's relay joins.",
    )  # fmt: skip
    BROADCAST_CHANNEL_LAYER = Setting[str](
        "default", "be a string", "broadcast.E002",
        "The alias in CHANNEL_LAYERS that carries broadcasts between processes.",
    )  # fmt: skip
    BROADCAST_MAX_MESSAGE_BYTES = Setting[int](
        64 * 1024, "be a positive integer", "broadcast.E003",
        "Largest serialised envelope, in UTF-8 bytes, that publish() accepts.",
    )  # fmt: skip
    BROADCAST_MAX_PENDING_BYTES = Setting[int](
        1024 * 1024, "be a positive integer", "broadcast.E004",
        "Bytes queued for one client before it is dropped as a slow client.",
    )  # fmt: skip
    BROADCAST_HEARTBEAT_SECONDS = Setting[float](
        5.0, "be a positive number", "broadcast.E005",
        "How often each server process writes its connection-count row and looks for "
        "persisted broadcasts the channel layer lost.",
    )  # fmt: skip
    BROADCAST_REQUIRE_AUTH = Setting[bool](
        False, "be True or False", "broadcast.E008",
        "Refuse WebSocket clients that are not logged in (403 at the handshake).",
    )  # fmt: skip
    BROADCAST_HISTORY_LIMIT = Setting[int](
        1000, "be a positive integer", "broadcast.E009",
        "Most broadcasts replayed to one resuming client; beyond it, hub.reset.",
    )  # fmt: skip
    BROADCAST_HISTORY_TTL = Setting[float](
        24 * 60 * 60, "be a positive number", "broadcast.E010",
        "Seconds a broadcast stays replayable; an older gap gets hub.reset.",
    )  # fmt: skip
    BROADCAST_MAX_INCOMING_BYTES = Setting[int](
        4096, "be a positive integer", "broadcast.E011",
        "Largest text frame a client may send; larger ones close with 1009.",
    )  # fmt: skip
    BROADCAST_MAX_INCOMING_RATE = Setting[float](
        10.0, "be a positive number", "broadcast.E012",
        "Frames per second a client may send (bursts of twice that); more: 1008.",
    )  # fmt: skip
    BROADCAST_MAX_CONNECTIONS = Setting[int | None](
        None, "be None or a positive integer", "broadcast.E013",
        "Clients one server process accepts; the excess is closed with 1013.",
    )  # fmt: skip
    BROADCAST_SHUTDOWN_TIMEOUT = Setting[float](
        10.0, "be a positive number", "broadcast.E014",
        "Seconds a stopping server takes to close its clients with 1012 (paced).",
    )  # fmt: skip
    BROADCAST_RETENTION_DAYS = Setting[float](
        30, "be a positive number", "broadcast.E016",
        "Days `manage.py prunehub` keeps broadcasts, samples and stopped process rows.",
    )  # fmt: skip
    BROADCAST_METRICS_ENABLED = Setting[bool](
        True, "be True or False", "broadcast.E017",
        "Serve /metrics (Prometheus text format); off: 404.",
    )  # fmt: skip
    BROADCAST_HEALTHZ_ENABLED = Setting[bool](
        True, "be True or False", "broadcast.E018",
        "Serve /healthz (JSON; 503 when the database or channel layer is down).",
    )  # fmt: skip
    BROADCAST_METRICS_TOKEN = Setting[str | None](
        None, "be None or a non-empty string", "broadcast.E019",
        "When set, /metrics needs the header ``Authorization: Bearer <token>``.",
    )  # fmt: skip
    BROADCAST_MAX_RELAY_BACKLOG = Setting[int | None](
        4, "be None or a positive integer", "broadcast.E021",
        "Broadcasts a relay may have queued in Redis before publishers wait; None: off.",
    )  # fmt: skip
    BROADCAST_FAST_PATH = Setting[bool](
        True, "be True or False", "broadcast.E023",
        "Write prepared frames to daphne's and uvicorn's transports; off: the ASGI send.",
    )  # fmt: skip
    BROADCAST_MAX_TOPICS_PER_CLIENT = Setting[int](
        100, "be a positive integer", "broadcast.E025",
        "Topics one connection may subscribe to; more are denied with hub.error.",
    )  # fmt: skip
    BROADCAST_TOPIC_AUTHORIZER = Setting[str](
        "broadcast.clients.authorizer.default_authorizer",
        "be a dotted path to a callable, e.g. 'myapp.topics.authorize'", "broadcast.E026",
        "``authorize(user, topic) -> bool``: who may subscribe to what.",
    )  # fmt: skip
    BROADCAST_API_KEYS = Setting[list[str]](
        [], "be a list of keys, each a string of at least 16 characters", "broadcast.E027",
        "Bearer keys for ``POST /broadcast/publish``; empty: that endpoint is a 404.",
        secret=True,
    )  # fmt: skip

    def __init__(self) -> None:
        self.cache: dict[str, Any] = {}

    def reload(self, **kwargs: Any) -> None:
        self.cache.clear()

    @classmethod
    def declared(cls) -> Iterator[Setting[Any]]:
        """Every setting, in the order declared."""
        for value in vars(cls).values():
            if isinstance(value, Setting):
                yield value

    @property
    def live_window(self) -> float:
        """Seconds after its last heartbeat that a process or relay still counts as live."""
        return self.BROADCAST_HEARTBEAT_SECONDS * STALE_HEARTBEATS

    def cuts_into_history(self, days: float) -> bool:
        """Whether keeping ``days`` of broadcasts would prune history clients can resume."""
        return days * 86400 < self.BROADCAST_HISTORY_TTL


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """
    The app settings that ``environ`` sets, by their own names (``BROADCAST_MAX_CONNECTIONS=500``),
    parsed by each declaration's rule: for a settings module configured from its
    environment (``globals().update(from_environment(os.environ))``). An unset or empty
    variable leaves the default; a value that cannot be parsed raises
    ``ImproperlyConfigured`` naming it. The system checks judge what it parses.
    """
    found: dict[str, Any] = {}
    for setting in Settings.declared():
        raw = environ.get(setting.name, "").strip()
        if raw:
            found[setting.name] = _parsed(setting, raw)
    return found


def _parsed(setting: Setting[Any], raw: str) -> Any:
    must = setting.rule.must
    if must.startswith("be None or") and raw.lower() in {"none", "off"}:
        return None
    if must == "be True or False":
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ImproperlyConfigured(f"{setting.name} must be 1/0 or true/false, got {raw!r}.")
    if must.startswith("be a list"):
        return [item.strip() for item in raw.split(",") if item.strip()]
    cast = int if "integer" in must else float if "number" in must else None
    if cast is None:
        return raw
    try:
        return cast(raw)
    except ValueError:
        kind = "an integer" if cast is int else "a number"
        raise ImproperlyConfigured(f"{setting.name} must be {kind}, got {raw!r}.") from None


conf = Settings()
setting_changed.connect(conf.reload)
