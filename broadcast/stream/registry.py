"""
The registry of this process's clients, and the index from each topic to its
subscribers: what the fan-out reads to know who gets what. Most clients subscribe to
no topic, and cost the index nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broadcast.clients.outbox import Outbox


class Registry:
    """The clients, and the topic index over them."""

    def __init__(self) -> None:
        self.clients: set[Outbox] = set()
        # topic -> its subscribers, and each subscriber's topics (only clients with
        # any: most subscribe to none, and a dict entry each would cost them memory).
        self.topics: dict[str, set[Outbox]] = {}
        self._subscriptions: dict[Outbox, set[str]] = {}
        self.registrations = 0  # clients added so far: a sweep stops taking after one

    def add(self, outbox: Outbox) -> None:
        self.clients.add(outbox)
        self.registrations += 1

    def remove(self, outbox: Outbox) -> bool:
        """Forget a client and its topics; False if it was not registered."""
        if outbox not in self.clients:
            return False
        self.clients.remove(outbox)
        self.unsubscribe(outbox, tuple(self._subscriptions.get(outbox, ())))
        return True

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
