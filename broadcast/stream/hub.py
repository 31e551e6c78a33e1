"""
The process hub: the registry of this process's clients, and its fan-out.

A port of the Go hub (register, unregister, broadcast, a bounded send buffer per
client) onto Channels. The channel layer carries each broadcast between processes;
inside a process, one relay (:mod:`broadcast.stream.relay`) is the only member of the
broadcast group, and the fan-out writes the already-serialised envelope into each
local client's outbox (:mod:`broadcast.clients.outbox`). There is no channel-layer queue per
client, no JSON work per client, and no database call on the delivery path.

A fan-out to more clients than one chunk (``BROADCAST_SWEEP_CHUNK``) is a *sweep*: the loop
runs between chunks, and what the layer received meanwhile joins the writes still to
come, so that broadcasts published during a fan-out cost each client one write, as
Gorilla's ``writePump`` joins what queued while it wrote.

Topics stay on the same group and the same relay: the hub keeps an index from each
topic to its subscribed clients, so a topic broadcast costs its subscribers, not
every client. The hub writes what the relay hands it: the relay alone owns the stream
position (ids are global: every broadcast, whatever its topic, advances it).

Each event loop has its own hub (daphne and uvicorn run one loop per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from channels.layers import get_channel_layer

from broadcast import metrics
from broadcast.clients.outbox import Outbox, Outgoing
from broadcast.conf import conf
from broadcast.protocol import MESSAGE_TYPE
from broadcast.seams import servers
from broadcast.stream import tuning
from broadcast.stream.counts import Counts
from broadcast.stream.heartbeat import heartbeat
from broadcast.stream.relay import STOP_WAIT_SECONDS, Relay
from broadcast.stream.shutdown import close_in_batches, drain

logger = logging.getLogger(__name__)


class ProcessHub:
    """This process's clients, the relay that feeds them, and their counts."""

    def __init__(self) -> None:
        self.clients: set[Outbox] = set()
        # topic -> its subscribers, and each subscriber's topics (only clients with
        # any: most subscribe to none, and a dict entry each would cost them memory).
        self.topics: dict[str, set[Outbox]] = {}
        self._subscriptions: dict[Outbox, set[str]] = {}
        self.stopping = False
        self.relay = Relay(
            get_channel_layer(conf.BROADCAST_CHANNEL_LAYER), conf.BROADCAST_GROUP, self
        )
        self.counts = Counts(current=lambda: len(self.clients), topics=self.topic_counts)
        self._membership = asyncio.Lock()
        self._registrations = 0  # clients added so far: a sweep stops taking after one
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def current(self) -> int:
        return len(self.clients)

    @property
    def last_id(self) -> int:
        """The stream position, which the relay owns: welcomes and pongs report it."""
        return self.relay.position

    @property
    def relay_state(self) -> str:
        """
        idle (no client yet), running, holding (at a gap the database cannot fill
        yet), restarting (after a failure) or stopped.
        """
        if not self.relay.started:
            return "stopped" if self.stopping else "idle"
        if self.relay.holding_since is not None:
            return "holding"
        return "running" if self.relay.running else "restarting"

    # Register and unregister -------------------------------------------------

    async def register(
        self,
        outbox: Outbox,
        welcome: Callable[[int], str],
        *,
        hold: bool = False,
        limit: int | None = None,
        topics: Iterable[str] = (),
        answer: str | None = None,
    ) -> bool:
        """
        Add a client, unless the process already has ``limit`` clients (False). The
        first one in the process starts the relay; then the client gets its welcome
        frame (built by ``welcome(last_id)``) and every broadcast relayed after it,
        global or on one of its ``topics``, with nothing in between. ``answer``
        (what it was granted) goes right after the welcome.
        """
        # The lock only matters while the relay joins, which ends with reading the
        # last id: a client that came meanwhile waits for it. Afterwards, clients
        # register without it (an uncontended asyncio.Lock still costs a few
        # microseconds a connect, and a queue of waiters after a join).
        if not self.relay.started or self._membership.locked():
            async with self._membership:
                if not self.relay.started:
                    await self.relay.start()  # sets last_id before it receives
        if self._heartbeat is None:
            self._heartbeat = asyncio.ensure_future(heartbeat(self.counts, self.relay))
        # No await from here on: the limit holds for a burst of connects, and the
        # welcome's last id and the first relayed broadcast cannot be interleaved.
        if limit is not None and len(self.clients) >= limit:
            return False
        outbox.push_text(welcome(self.last_id))
        if answer is not None:
            outbox.push_text(answer)
        if hold:
            outbox.hold()
        self.clients.add(outbox)
        self._registrations += 1
        self.subscribe(outbox, topics)
        tuning.connection_opened()
        self.counts.accepted()
        metrics.connections.inc()
        metrics.connections_accepted.inc()
        return True

    def unregister(self, outbox: Outbox) -> None:
        """
        Remove a client. The process stays in the group when its last client leaves:
        leaving would mean stopping a relay that may be inside the layer's receive,
        and the next client would wait for that. A relay with no clients costs one
        receive per broadcast.
        """
        if outbox in self.clients:
            self.clients.remove(outbox)
            self.unsubscribe(outbox, tuple(self._subscriptions.get(outbox, ())))
            metrics.connections.dec()
            if not self.stopping:  # collecting garbage on the way out is wasted time
                tuning.connection_closed(len(self.clients))

    # Topics ------------------------------------------------------------------

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

    # Fan-out -----------------------------------------------------------------

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
        run after each chunk of ``BROADCAST_SWEEP_CHUNK`` clients. After each turn, ``take(room)``
        gives what the layer holds now (global broadcasts, without waiting): the
        clients not yet written to get it in the same write as the rest, those already
        written to get it, in one write, on the next pass, and passes go on until every
        client has everything taken. A client's write never holds more than ``limit``
        broadcasts, and each client gets them in the order taken.

        A client that registers during a sweep is not in it: from then on nothing more
        is taken, since its welcome counts every broadcast taken so far and it must get
        every one after.
        """
        size = conf.BROADCAST_SWEEP_CHUNK
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
        registrations = self._registrations
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
                if room > 0 and self._registrations == registrations:
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
        if topic is not None and not self.topics.get(topic):
            return None  # the relay counted its id all the same: ids are global
        return Outgoing.of_text(text, msg_id), topic

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

    # Stopping ----------------------------------------------------------------

    async def shutdown(self) -> None:
        """
        Close every client with 1012 (service restart), in batches spread over half of
        BROADCAST_SHUTDOWN_TIMEOUT, and wait, within the whole of it, for the close
        frames to leave this process; then stop and mark this process's row stopped.
        """
        self.stopping = True  # from now on, connects are turned away (consumers.py)
        timeout = conf.BROADCAST_SHUTDOWN_TIMEOUT
        until = asyncio.get_running_loop().time() + timeout
        await drain(await close_in_batches(self.clients, timeout / 2, until), until)
        metrics.connections.dec(len(self.clients))
        self.clients.clear()
        metrics.process_stopped()
        await self.close()
        try:
            await self.counts.write(stopped=True)
        except Exception as exc:
            logger.warning("Could not mark this process stopped: %s", exc)
        await self.counts.release(STOP_WAIT_SECONDS)

    async def close(self) -> None:
        """Stop the relay and the heartbeat (tests, and shutdown), hanging on neither."""
        heartbeat_task, self._heartbeat = self._heartbeat, None
        if heartbeat_task is not None:
            heartbeat_task.cancel()
            await asyncio.wait([heartbeat_task], timeout=STOP_WAIT_SECONDS)
        await self.counts.release(STOP_WAIT_SECONDS)  # after a beat still in its thread
        await self.relay.stop()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProcessHub] = (
    weakref.WeakKeyDictionary()
)


def get_hub() -> ProcessHub:
    """The hub of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = ProcessHub()
        servers.install_shutdown(lambda: _shutdown(hub))
    return hub


def running_hub() -> ProcessHub | None:
    """
    The running loop's hub if a client has created one, without creating it: what
    health checks report on, since creating a hub would start nothing worth reporting.
    """
    try:
        return _hubs.get(asyncio.get_running_loop())
    except RuntimeError:
        return None


async def _shutdown(hub: ProcessHub) -> None:
    try:
        await hub.shutdown()
    except Exception:  # the server's shutdown must run regardless
        logger.exception("Graceful shutdown failed")
