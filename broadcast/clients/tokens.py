"""
Signed connect tokens, for clients that cannot carry a Django session: mobile apps,
pages on other origins, services. A token names a user (or none) and the topics it
grants, and expires; it is signed with SECRET_KEY (Django's signing), so only the
server can mint one. A client passes it as ``?token=...``.

A valid token stands in for the Origin check (it is the proof of where the client
comes from that the Origin header gives a browser) and for the session.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.core import signing

from broadcast.protocol import validate_topic

SALT = "broadcast.clients.tokens.connect"


class InvalidToken(Exception):
    """The token is forged, malformed or expired. The message never includes the token."""


@dataclass(frozen=True)
class Grant:
    """What a valid token grants: its user's primary key (None: anonymous) and topics."""

    user_pk: Any
    topics: frozenset[str]


def connect_token(user: Any, *, topics: Iterable[str] = (), ttl: float = 3600) -> str:
    """
    A token that connects as ``user`` (None: anonymous) with ``topics`` granted
    without asking the authorizer, valid for ``ttl`` seconds.
    """
    if ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}.")
    names = sorted({validate_topic(topic) for topic in topics} - {None})  # type: ignore[type-var]
    pk = None if user is None else getattr(user, "pk", None)
    if user is not None and (pk is None or not getattr(user, "is_authenticated", False)):
        raise ValueError("connect_token needs a saved, authenticated user, or None.")
    expires = int(time.time() + ttl)
    return signing.dumps({"u": pk, "t": names, "x": expires}, salt=SALT, compress=True)


def read_token(token: str) -> Grant:
    """The grant of a valid token; InvalidToken for a forged, malformed or expired one."""
    try:
        data = signing.loads(token, salt=SALT)
    except signing.BadSignature as exc:
        raise InvalidToken("the connect token is not valid (bad signature)") from exc
    except Exception as exc:  # corrupt compression or JSON inside a valid signature
        raise InvalidToken("the connect token is malformed") from exc
    if not isinstance(data, dict) or not isinstance(data.get("x"), int):
        raise InvalidToken("the connect token is malformed")
    if data["x"] < time.time():
        raise InvalidToken("the connect token has expired")
    topics = data.get("t")
    if not isinstance(topics, list) or not all(isinstance(topic, str) for topic in topics):
        raise InvalidToken("the connect token is malformed")
    return Grant(user_pk=data.get("u"), topics=frozenset(topics))
