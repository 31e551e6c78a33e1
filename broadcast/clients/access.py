"""
The access rules of one connection: its connect token and that token's lifetime
(warned ahead of its expiry, refreshed in-band, closed at it), its user (resolved
once, only when needed) and owner, the topics it may subscribe (the token's grant, or
the authorizer's verdicts, bounded), and the rate of the frames it sends.

A mixin of the consumer, not an object of its own: its state lives in the consumer's
slots, one object fewer per idle connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.auth import get_user
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import DatabaseError

from broadcast.clients import authorizer
from broadcast.clients.tokens import Grant, InvalidToken, read_token
from broadcast.conf import conf
from broadcast.protocol import CLOSE_TOKEN_EXPIRED, error_text, expiring_text, refreshed_text

logger = logging.getLogger(__name__)

# One for every anonymous connection: it holds no state, and one per connection would
# be one more object for the garbage collector to walk per idle client.
ANONYMOUS = AnonymousUser()
# Authorizer verdicts one connection remembers before starting over.
VERDICTS_KEPT = 1000
# How long before its token expires a connection is sent hub.expiring (at most half
# the token's lifetime): the time a client has to fetch a new token and send it.
REFRESH_AHEAD_SECONDS = 60.0


class AccessRules:
    """What one connection may do; ``scope`` is the consumer's."""

    scope: dict[str, Any]
    _tokens = 0.0
    _refilled = 0.0
    _grant: Grant | None = None
    _user: Any = None
    # topic -> the authorizer's verdict, for this connection's life.
    _verdicts: dict[str, bool] | None = None
    _expiry: asyncio.TimerHandle | None = None

    async def _accept_token(self, token: str) -> bool:
        """Read a connect token; a bad one, or one whose user is gone, is refused."""
        grant, user, refusal = await self._grant_of(token)
        if grant is None:
            # The reason only: a token in a log line is a credential in a log file.
            logger.warning("Refused a WebSocket (403): %s", refusal)
            return False
        self._grant, self._user = grant, user
        return True

    async def _grant_of(self, token: Any) -> tuple[Grant | None, Any, str]:
        """(the grant, its user, "") for a valid token; (None, None, why not) otherwise."""
        if not isinstance(token, str):
            return None, None, "the connect token must be a string"
        try:
            grant = read_token(token)
        except InvalidToken as exc:
            return None, None, str(exc)
        if grant.user_pk is None:
            return grant, ANONYMOUS, ""
        user = await database_sync_to_async(_active_user)(grant.user_pk)
        if user is None:
            return None, None, "the connect token's user is gone or inactive"
        if not grant.binds(user):
            return None, None, "the connect token was minted before its user's password changed"
        return grant, user, ""

    async def _owner(self) -> str | None:
        """
        The user this connection is authenticated as (a revocation closes it), as
        text; None for an anonymous one. Resolving it costs a database read only for
        a connection that carries a session cookie or a user's token.
        """
        if self._grant is None and "user" not in self.scope and "session" not in self.scope:
            return None
        user = await self._resolve_user()
        if not getattr(user, "is_authenticated", False):
            return None
        return str(user.pk)

    # A token's lifetime ---------------------------------------------------------

    def _track_expiry(self) -> None:
        """From now on, warn the client ahead of its token's expiry, then close it."""
        if self._expiry is not None:
            self._expiry.cancel()
        if self._grant is None:
            return
        left = self._grant.expires - time.time()
        ahead = min(REFRESH_AHEAD_SECONDS, left / 2)
        self._expiry = asyncio.get_running_loop().call_later(
            max(0.0, left - ahead), self._warn_expiring
        )

    def _warn_expiring(self) -> None:
        if self._grant is None:
            return
        left = max(0.0, self._grant.expires - time.time())
        self._push_control(expiring_text(round(left)))
        self._expiry = asyncio.get_running_loop().call_later(left, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        logger.info("Closed a connection whose connect token expired (%s)", CLOSE_TOKEN_EXPIRED)
        self._end(CLOSE_TOKEN_EXPIRED, "token expired")

    async def _refresh(self, token: Any) -> None:
        """
        ``hub.refresh``: a new token for the same user extends the connection. The
        topics the old token granted and the new one does not are unsubscribed.
        """
        try:
            grant, user, refusal = await self._grant_of(token)
        except DatabaseError:
            self._push_control(error_text("hub.refresh failed: the database cannot be read"))
            return
        if not self._still_open():  # closed while the token was judged
            return
        if grant is not None and self._grant is not None and grant.user_pk != self._grant.user_pk:
            grant, refusal = None, "the new token names another user"
        elif grant is not None and self._grant is None:
            grant, refusal = None, "this connection was not opened with a connect token"
        if grant is None:
            self._push_control(error_text(f"hub.refresh refused: {refusal}"))
            return
        withdrawn = self._grant.topics - grant.topics if self._grant is not None else frozenset()
        self._grant, self._user = grant, user
        self._track_expiry()
        self._push_control(refreshed_text(round(grant.expires - time.time())))
        if withdrawn:
            self._drop_topics(sorted(withdrawn))

    def _stop_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    # Hooks the consumer provides.

    def _push_control(self, text: str) -> None:
        raise NotImplementedError

    def _end(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def _still_open(self) -> bool:
        raise NotImplementedError

    def _drop_topics(self, names: list[str]) -> None:
        raise NotImplementedError

    async def _judge(
        self, names: list[str], subscribed: frozenset[str]
    ) -> tuple[list[str], list[str], list[str]]:
        """
        (granted, denied, errors) for topic names: within BROADCAST_MAX_TOPICS_PER_CLIENT,
        granted by the connect token, or by the authorizer (asked once per topic).
        """
        inline = authorizer.runs_on_loop()
        if inline:
            verdicts: dict[str, bool] = {}  # asking again costs less than keeping it
        else:
            if self._verdicts is None or len(self._verdicts) > VERDICTS_KEPT:
                # Bounded: a client cycling through new names must not grow it for ever.
                self._verdicts = {}
            verdicts = self._verdicts
        limit = conf.BROADCAST_MAX_TOPICS_PER_CLIENT
        room = limit - len(subscribed)
        wanted, over = [], []
        for name in names:
            if name in subscribed:
                wanted.append(name)
            elif room > 0:
                wanted.append(name)
                room -= 1
            else:
                over.append(name)
        errors = []
        if over:
            errors.append(
                f"denied {len(over)} topic(s): at most {limit} per connection "
                f"(BROADCAST_MAX_TOPICS_PER_CLIENT)"
            )
        pre_granted = self._grant.topics if self._grant is not None else frozenset()
        unknown = [name for name in wanted if name not in verdicts and name not in pre_granted]
        if unknown:
            user = await self._resolve_user()
            if inline:
                verdicts.update(authorizer.verdicts(user, unknown))
            else:
                verdicts.update(await database_sync_to_async(authorizer.verdicts)(user, unknown))
        granted = [name for name in wanted if name in pre_granted or verdicts[name]]
        denied = [name for name in wanted if name not in granted] + over
        return granted, denied, errors

    async def _resolve_user(self) -> Any:
        """
        The connection's user, resolved once and only when it is needed:
        AuthMiddleware would resolve it on every connect, a database thread hop each.
        """
        if self._user is None:
            user = self.scope.get("user")
            if user is None and "session" in self.scope:
                user = await get_user(self.scope)
            self._user = user if user is not None else ANONYMOUS
        return self._user

    async def _authenticated(self) -> bool:
        if self._grant is None and "user" not in self.scope and "session" not in self.scope:
            raise ImproperlyConfigured(
                "BROADCAST_REQUIRE_AUTH needs the session (SessionMiddlewareStack or "
                "AuthMiddlewareStack) around the broadcast route."
            )
        user = await self._resolve_user()
        return bool(getattr(user, "is_authenticated", False))

    def _within_rate(self) -> bool:
        """A token bucket: BROADCAST_MAX_INCOMING_RATE a second, bursts of twice that."""
        rate = conf.BROADCAST_MAX_INCOMING_RATE
        now = asyncio.get_running_loop().time()
        if not self._refilled:
            self._tokens = 2 * rate
        else:
            self._tokens = min(2 * rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def _active_user(pk: Any) -> Any:
    """
    The active user with this primary key, or None (deleted, deactivated, bad pk); a
    database that cannot be read raises (the client is told to try again later).
    """
    model = get_user_model()
    manager = model._meta.default_manager
    assert manager is not None  # every concrete model has one
    try:
        user = manager.get(pk=pk)
    except (model.DoesNotExist, ValueError, TypeError, ValidationError):
        return None
    return user if getattr(user, "is_active", True) else None
