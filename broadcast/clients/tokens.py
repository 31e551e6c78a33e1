"""
Signed connect tokens, for clients that cannot carry a Django session: mobile apps,
pages on other origins, services. A token names a user (or none) and the topics it
grants, and expires; it is signed with SECRET_KEY (Django's signing), so only the
server can mint one. A client passes it as ``?token=...``.

A valid token stands in for the Origin check (it is the proof of where the client
comes from that the Origin header gives a browser) and for the session. Like a
session, it is bound to its user's session auth hash (Django's, which changes with
the password): a password change invalidates every token minted before it. The token
carries a digest of that hash, never the hash.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.core import signing
from django.utils.crypto import constant_time_compare

from broadcast.protocol import validate_topic

SALT = "broadcast.clients.tokens.connect"
# A token with less left than this counts as expired: a connection it opened would be
# warned and closed at once.
MIN_LIFETIME_SECONDS = 1.0


class InvalidToken(Exception):
    """The token is forged, malformed or expired. The message never includes the token."""


@dataclass(frozen=True)
class Grant:
    """What a valid token grants: its user's primary key (None: anonymous) and topics."""

    user_pk: Any
    topics: frozenset[str]
    expires: int  # Unix time
    binding: str | None = None  # the digest of the user's session auth hash, if it has one

    def binds(self, user: Any) -> bool:
        """Whether ``user`` still has the session auth hash this token was minted with."""
        if self.binding is None:
            return not _hashes(user)  # a user model with no auth hash binds nothing
        return any(constant_time_compare(self.binding, _digest(h)) for h in _hashes(user))


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
    expires = math.ceil(time.time() + ttl)
    data = {"u": pk, "t": names, "x": expires}
    hashes = _hashes(user) if user is not None else []
    if hashes:
        data["h"] = _digest(hashes[0])
    return signing.dumps(data, salt=SALT, compress=True)


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
    if data["x"] - time.time() < MIN_LIFETIME_SECONDS:
        raise InvalidToken("the connect token has expired")
    topics = data.get("t")
    if not isinstance(topics, list) or not all(isinstance(topic, str) for topic in topics):
        raise InvalidToken("the connect token is malformed")
    binding = data.get("h")
    if binding is not None and not isinstance(binding, str):
        raise InvalidToken("the connect token is malformed")
    return Grant(data.get("u"), frozenset(topics), data["x"], binding)


def _hashes(user: Any) -> list[str]:
    """
    The user's session auth hash, then those made with SECRET_KEY_FALLBACKS (a token
    minted before a key rotation stays valid, as a session does); none if the user
    model has no such hash (not an AbstractBaseUser).
    """
    current = getattr(user, "get_session_auth_hash", None)
    if current is None:
        return []
    fallbacks = getattr(user, "get_session_auth_fallback_hash", None)
    return [current(), *(fallbacks() if fallbacks is not None else ())]


def _digest(session_auth_hash: str) -> str:
    # A plain hash of an HMAC keyed with SECRET_KEY: no secret of its own, so a hash
    # made with a fallback key still matches after the key rotates.
    return hashlib.sha256(f"{SALT}:{session_auth_hash}".encode()).hexdigest()[:32]
