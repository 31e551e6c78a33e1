"""
The fan-out: what the relay hands over, written into each local client's outbox,
framed once for all of them. A fan-out to more clients than one chunk
(``SWEEP_CHUNK``) is a *sweep*: the loop runs between chunks, and what the
layer received meanwhile joins the writes still to come, so that broadcasts published
during a fan-out cost each client one write, as Gorilla's ``writePump`` joins what
queued while it wrote. A topic broadcast costs its subscribers, not every client.

It writes what it is handed: the relay alone decides what that is, and owns the ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from broadcast import metrics
from broadcast.group import MESSAGE_TYPE, REVOKE_TOPIC
from broadcast.stream.outgoing import Outgoing
from broadcast.stream.registry import Registry

if TYPE_CHECKING:
    from broadcast.clients.outbox import Outbox

logger = logging.getLogger(__name__)

# Clients a fan-out writes to between turns of the event loop.
SWEEP_CHUNK = 64


class FanOut(Registry):
    """The registry's clients, written to."""

    def fan_out(self, message: dict[str, Any]) -> None:
        """
        Hand one group message to every client (or, with a topic, to its subscribers),
        framed once for all of them.
        """
        self.fan_out_batch([message])

    def fan_out_batch(self, messages: list[dict[str, Any]]) -> None:
        """
        Hand several group messages, in order, to the clients each is for. A client
        gets all of its messages in one write: one system call instead of one per
        broadcast, which is most of what a burst costs.
        """
        started = time.perf_counter()
        global_only: list[Outgoing] = []
        # Each message for clients, and the topic it is for (None: every client).
        ready: list[tuple[Outgoing, str | None]] = []
        for message in messages:
            outgoing = self._accept(message)
            if outgoing is not None:
                ready.append(outgoing)
                if outgoing[1] is None:
                    global_only.append(outgoing[0])
        if not ready:
            return
        deliveries = 0
        if len(global_only) == len(ready):  # every client gets the same bytes
            batch = Outgoing.batch(global_only)
            clients = tuple(self.clients)
            self._push_each(clients, batch)
            deliveries = len(clients) * len(ready)
        else:
            for outbox, batch, count in self._per_client(ready, global_only):
                self._push_each((outbox,), batch)
                deliveries += count
        metrics.deliveries.inc(deliveries)
        metrics.fan_out_batch.observe(len(ready))
        metrics.fan_out_seconds.observe(time.perf_counter() - started)

    async def sweep(
        self,
        messages: list[dict[str, Any]],
        take: Callable[[int], list[dict[str, Any]]],
        limit: int,
    ) -> None:
        """
        :meth:`fan_out_batch` for global broadcasts to many clients, letting the loop
        run after each chunk of ``SWEEP_CHUNK`` clients. After each turn, ``take(room)``
        gives what the layer holds now (global broadcasts, without waiting): the
        clients not yet written to get it in the same write as the rest, those already
        written to get it, in one write, on the next pass, and passes go on until every
        client has everything taken. A client's write never holds more than ``limit``
        broadcasts, and each client gets them in the order taken.

        A client that registers during a sweep is not in it: from then on nothing more
        is taken, since its welcome counts every broadcast taken so far and it must get
        every one after.
        """
        size = SWEEP_CHUNK
        if len(self.clients) <= size or any(
            message.get("topic") is not None for message in messages
        ):
            self.fan_out_batch(messages)
            return
        started = time.perf_counter()
        log = self._accept_global(messages)
        clients = tuple(self.clients)
        chunks = [clients[at : at + size] for at in range(0, len(clients), size)]
        written = [0] * len(chunks)  # how much of ``log`` each chunk has been sent
        registrations = self.registrations
        deliveries = 0
        while min(written) < len(log):
            for index, chunk in enumerate(chunks):
                done = written[index]
                if done == len(log):
                    continue
                self._push_each(chunk, Outgoing.batch(log[done:]))
                deliveries += len(chunk) * (len(log) - done)
                written[index] = len(log)
                await asyncio.sleep(0)  # publishers and the layer's reader run here
                room = limit - (len(log) - min(written))
                if room > 0 and self.registrations == registrations:
                    log.extend(self._accept_global(take(room)))
            floor = min(written)
            if floor >= limit:  # what every chunk has had is no longer needed
                del log[:floor]
                written = [done - floor for done in written]
        metrics.deliveries.inc(deliveries)
        metrics.fan_out_seconds.observe(time.perf_counter() - started)

    def _accept_global(self, messages: list[dict[str, Any]]) -> list[Outgoing]:
        """Global messages for clients, in order (those no client gets left out)."""
        if messages:
            metrics.fan_out_batch.observe(len(messages))
        accepted = []
        for message in messages:
            outgoing = self._accept(message)
            if outgoing is not None:
                accepted.append(outgoing[0])
        return accepted

    def _accept(self, message: dict[str, Any]) -> tuple[Outgoing, str | None] | None:
        """A group message as a client message and its topic; None if no client gets it."""
        text = message.get("text")
        if message.get("type") != MESSAGE_TYPE or not isinstance(text, str):
            logger.warning(
                "Ignored a group message that is not a broadcast.message with a 'text' "
                "envelope: %r",
                {key: message.get(key) for key in ("type", "id")},
            )
            return None
        msg_id = message.get("id")
        if not isinstance(msg_id, int):
            msg_id = None
        topic = message.get("topic")
        if topic == REVOKE_TOPIC:
            self._revoke_from(text)
            return None
        if topic is not None and not self.topics.get(topic):
            return None  # the relay counted its id all the same: ids are global
        return Outgoing.of_text(text, msg_id), topic

    def _revoke_from(self, text: str) -> None:
        """
        Close the connections of the owner a revocation names, here in the stream's
        order: what is handed over after it reaches none of them.
        """
        try:
            owner = json.loads(text)["payload"]["owner"]
        except (ValueError, KeyError, TypeError):
            owner = None
        if not isinstance(owner, str):
            logger.warning("Ignored a revocation that names no owner: %.200s", text)
            return
        revoked = self.revoke(owner)
        if revoked:
            logger.info("Closed %s connection(s) whose access was revoked", revoked)

    def _per_client(
        self, ready: list[tuple[Outgoing, str | None]], global_only: list[Outgoing]
    ) -> Iterable[tuple[Outbox, Outgoing, int]]:
        """
        Each client's share of a batch with topics, in order: subscribers of its
        topics get their own selection, every other client the global messages.
        """
        topics = {topic for _, topic in ready if topic is not None}
        if len(topics) == 1 and not global_only:  # one topic's: the same bytes for all
            batch = Outgoing.batch([outgoing for outgoing, _ in ready])
            for outbox in tuple(self.topics[topics.pop()]):
                yield outbox, batch, len(ready)
            return
        subscribers: set[Outbox] = set()
        for topic in topics:
            subscribers.update(self.topics.get(topic, ()))
        if global_only:
            batch = Outgoing.batch(global_only)
            for outbox in tuple(self.clients):  # a cut client leaves the set at once
                if outbox not in subscribers:
                    yield outbox, batch, len(global_only)
        for outbox in subscribers:
            mine: set[str] | frozenset[str] = self._subscriptions.get(outbox, frozenset())
            share = [outgoing for outgoing, topic in ready if topic is None or topic in mine]
            yield outbox, Outgoing.batch(share), len(share)

    @staticmethod
    def _push_each(clients: Iterable[Outbox], outgoing: Outgoing) -> None:
        for outbox in clients:
            try:
                outbox.push(outgoing)
            except Exception:  # one client's failure must not cost the others
                logger.exception("Delivery to a client failed; cutting it so it resumes")
                with contextlib.suppress(Exception):
                    outbox.cut()


class Clients(Protocol):
    """The hub as the relay sees it: its fan-out, and the owners of its connections."""

    def fan_out(self, message: dict[str, Any]) -> None: ...

    def fan_out_batch(self, messages: list[dict[str, Any]]) -> None: ...

    async def sweep(
        self,
        messages: list[dict[str, Any]],
        take: Callable[[int], list[dict[str, Any]]],
        limit: int,
    ) -> None: ...

    def recheck_owners(self) -> int: ...

    def note_revoked(self, owner: str, when: float | None = None) -> None: ...
