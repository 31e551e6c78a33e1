"""
Who may subscribe to what: topic names from clients, and the authorizer that rules
on them (BROADCAST_TOPIC_AUTHORIZER).

The authorizer is asked when the client subscribes, in a thread (the default one,
which reads nothing, on the event loop); a custom authorizer's verdict is kept for the
connection's life, and no verdict is ever asked again per broadcast.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from broadcast.conf import conf
from broadcast.protocol import InvalidTopic, validate_topic
from broadcast.publishing.api import USER_TOPIC_PREFIX, user_topic

logger = logging.getLogger(__name__)

Authorizer = Callable[[Any, str], bool]
# Invalid names one subscribe (frame or connect URL) is told about, one hub.error each.
ERRORS_REPORTED = 10


def default_authorizer(user: Any, topic: str) -> bool:
    """Any topic, except ``user.<pk>``: only that user, logged in, gets it."""
    if topic.startswith(USER_TOPIC_PREFIX):
        return bool(getattr(user, "is_authenticated", False)) and topic == user_topic(user)
    return True


@functools.lru_cache(maxsize=4)
def _load(path: str) -> Authorizer:
    try:
        authorizer = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"BROADCAST_TOPIC_AUTHORIZER {path!r} cannot be imported: {exc}"
        ) from exc
    if not callable(authorizer):
        raise ImproperlyConfigured(f"BROADCAST_TOPIC_AUTHORIZER {path!r} is not callable.")
    return authorizer  # type: ignore[no-any-return]


def authorizer() -> Authorizer:
    """The configured authorizer (imported once per setting value)."""
    return _load(conf.BROADCAST_TOPIC_AUTHORIZER)


def runs_on_loop() -> bool:
    """
    Whether the authorizer may run on the event loop: only the default one, which
    reads the user already resolved and nothing else. A thread hop per subscribing
    connect slows a connect burst (scenario T, docs/benchmarks.md).
    """
    return authorizer() is default_authorizer


def verdicts(user: Any, topics: Iterable[str]) -> dict[str, bool]:
    """
    The authorizer's verdict on each topic (call it in a thread: it may query the
    database). An authorizer that raises denies that topic, and the error is logged.
    """
    authorize = authorizer()
    judged = {}
    for topic in topics:
        try:
            judged[topic] = bool(authorize(user, topic))
        except Exception:
            logger.exception("BROADCAST_TOPIC_AUTHORIZER failed on topic %r; denied", topic)
            judged[topic] = False
    return judged


def parse_names(raw: Any) -> tuple[list[str], list[str]]:
    """
    (valid topic names, in order and without repeats, and errors for the others) from
    a ``hub.subscribe`` or ``hub.unsubscribe`` frame's ``topics`` or the connect
    query's ``topics=a,b``: the one judge of the names a client sends.
    """
    if not isinstance(raw, list):
        return [], ["topics must be a list of topic names"]
    names: list[str] = []
    errors: list[str] = []
    for name in raw:
        try:
            topic = validate_topic(name)
        except InvalidTopic as exc:
            errors.append(str(exc))
            continue
        if topic is not None and topic not in names:
            names.append(topic)
    if len(errors) > ERRORS_REPORTED:
        # One hub.error frame each: a list of bad names must not become a flood of them.
        more = len(errors) - ERRORS_REPORTED
        errors = [*errors[:ERRORS_REPORTED], f"and {more} more invalid topic name(s)"]
    return names, errors
