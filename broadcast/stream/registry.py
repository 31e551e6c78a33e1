"""
The registry of this process's clients, the index from each topic to its
subscribers (what the fan-out reads to know who gets what), and the index from each
*owner* (the user a connection authenticated as) to its connections, which a
revocation closes. Most clients subscribe to no topic and have no owner, and cost
the indexes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from broadcast.protocol import CLOSE_REVOKED, CLOSE_TRY_AGAIN_LATER

if TYPE_CHECKING:
    from broadcast.clients.outbox import Outbox

# How long a revocation is remembered: a connect whose access was checked before it
# and that registers after it is closed all the same (``revoked_since``).
REVOKED_KEPT_SECONDS = 300.0


class Registry:
    """The clients, and the topic index over them."""

    def __init__(self) -> None:
        self.clients: set[Outbox] = set()
        # topic -> its subscribers, and each subscriber's topics (only clients with
        # any: most subscribe to none, and a dict entry each would cost them memory).
        self.topics: dict[str, set[Outbox]] = {}
        self._subscriptions: dict[Outbox, set[str]] = {}
        self.registrations = 0  # clients added so far: a sweep stops taking after one
        # owner -> its connections; each connection's owner.
        self.owned: dict[str, set[Outbox]] = {}
        self._owners: dict[Outbox, str] = {}
        self._revoked: dict[str, float] = {}  # owner -> when (monotonic) it was revoked

    def add(self, outbox: Outbox, owner: str | None = None) -> None:
        self.clients.add(outbox)
        self.registrations += 1
        if owner is not None:
            self._owners[outbox] = owner
            self.owned.setdefault(owner, set()).add(outbox)

    def remove(self, outbox: Outbox) -> bool:
        """Forget a client, its topics and its owner; False if it was not registered."""
        if outbox not in self.clients:
            return False
        self.clients.remove(outbox)
        self.unsubscribe(outbox, tuple(self._subscriptions.get(outbox, ())))
        owner = self._owners.pop(outbox, None)
        if owner is not None:
            mine = self.owned[owner]
            mine.discard(outbox)
            if not mine:
                del self.owned[owner]
        return True

    def revoke(self, owner: str) -> int:
        """Close every connection of ``owner`` now (nothing more reaches them); how many."""
        self.note_revoked(owner)
        connections = [outbox for outbox in self.owned.get(owner, ()) if not outbox.closed]
        for outbox in connections:
            outbox.end(CLOSE_REVOKED, "access revoked")
        return len(connections)

    def recheck_owners(self) -> int:
        """
        Close every connection that has an owner with 1013, to come back and be judged
        again: after a ``hub.reset``, revocations among the ids it skipped are unknown.
        """
        connections = [
            outbox for mine in self.owned.values() for outbox in mine if not outbox.closed
        ]
        for outbox in connections:
            outbox.end(CLOSE_TRY_AGAIN_LATER, "access recheck")
        return len(connections)

    def note_revoked(self, owner: str, when: float | None = None) -> None:
        """
        Remember that ``owner`` was revoked at ``when`` (the monotonic clock; by default
        now): a connect judged before it and registered after is closed.
        """
        now = time.monotonic()
        self._revoked[owner] = max(self._revoked.get(owner, 0.0), now if when is None else when)
        if len(self._revoked) > 1000:  # a revocation storm must not grow it for ever
            self._revoked = {
                key: when for key, when in self._revoked.items()
                if now - when < REVOKED_KEPT_SECONDS
            }  # fmt: skip

    def revoked_since(self, owner: str | None, since: float) -> bool:
        """Whether ``owner`` was revoked at or after the monotonic time ``since``."""
        if owner is None:
            return False
        when = self._revoked.get(owner)
        return when is not None and when >= since

    def subscribe(self, outbox: Outbox, topics: Iterable[str]) -> None:
        """From now on, ``outbox`` also gets the broadcasts of ``topics``."""
        if outbox not in self.clients:
            return  # unregistered meanwhile (an authorizer answered after a close)
        for topic in topics:
            mine = self._subscriptions.setdefault(outbox, set())
            if topic not in mine:
                mine.add(topic)
                self.topics.setdefault(topic, set()).add(outbox)

    def unsubscribe(self, outbox: Outbox, topics: Iterable[str]) -> None:
        """From now on, ``outbox`` no longer gets the broadcasts of ``topics``."""
        mine = self._subscriptions.get(outbox)
        if mine is None:
            return
        for topic in topics:
            if topic in mine:
                mine.discard(topic)
                subscribers = self.topics[topic]
                subscribers.discard(outbox)
                if not subscribers:
                    del self.topics[topic]
        if not mine:
            del self._subscriptions[outbox]

    def subscriptions(self, outbox: Outbox) -> frozenset[str]:
        """The topics ``outbox`` is subscribed to."""
        return frozenset(self._subscriptions.get(outbox, ()))

    def topic_counts(self) -> dict[str, int]:
        """How many of this process's clients subscribe to each topic."""
        return {topic: len(subscribers) for topic, subscribers in self.topics.items()}
