"""
The relay: this process's one member of the broadcast group and the one owner of its
stream position. It receives each broadcast once, forms batches, finds gaps in the
ids, fills them, advances the position, and hands the hub's fan-out what to write.

Its invariant, checked in one place (``_advance``): the position moves past an id
only when that id was fanned out, when history shows it was never sent (a burnt id),
or when a ``hub.reset`` naming it was sent. A fan-out that raises puts it back.

It is supervised (a failure is logged, retried with a growing delay, and followed by
a catch-up from the database), and it fills gaps: persisted ids reach the layer in
order under the send lock, so a jump in ids means broadcasts the layer lost, which it
reads from the database before it fans out the next one. When the database cannot
be read, it holds the live stream (in the layer) and retries; "could not read" is
never taken for "history is gone". Past HOLD_SECONDS its clients get ``hub.reset``.

A broadcast the layer lost with nothing after it (a pub/sub process not yet subscribed
again after Redis restarted) leaves no gap to notice: on each heartbeat, a relay that
has waited on an empty layer for LOST_AFTER_SECONDS sends from the database what was
sent before then and never reached it.

It coalesces: after each receive, it takes every message the layer already holds
(up to BROADCAST_COALESCE_MAX) without waiting for any, and hands them to the fan-out
together, so that a burst costs each client one write instead of one per broadcast.
A fan-out to many clients lets the loop run between chunks of them, and takes what
reached the layer meanwhile into the writes still to come (the hub's ``sweep``), so
broadcasts published one by one during a fan-out are coalesced too. A lone broadcast
goes out at once: nothing waits to form a batch. On channels-redis's core layer, whose
receive takes one message per Redis round trip, what Redis holds is taken in one
round trip after the fan-out instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeAlias

from channels.db import database_sync_to_async
from django.utils import timezone

from broadcast import metrics
from broadcast.conf import conf
from broadcast.history import newest_id, newest_sent_before, replay_after
from broadcast.protocol import relay_message, reset_text, unpacked
from broadcast.seams import eager
from broadcast.seams.layers import pubsub
from broadcast.seams.layers import redis as redis_layer

logger = logging.getLogger("broadcast.stream.hub")

RELAY_PREFIX = "broadcast-relay"
# The restart backoff after a failure (the layer unreachable, or a bug).
RESTART_FIRST_DELAY, RESTART_MAX_DELAY = 0.5, 5.0
# How long stopping waits for a cancelled task: channels-redis's receive can swallow
# a cancellation inside redis-py's retry and carry on, and a stop must not hang on it.
STOP_WAIT_SECONDS = 2.0
# A relay delivers within milliseconds: one idle for this long, while a broadcast sent
# this long ago never reached it, will not get that broadcast from the layer.
LOST_AFTER_SECONDS = 1.0
# How long a gap whose history cannot be read holds the stream, retrying with a
# growing delay, before clients are told with hub.reset: a database failover's span.
HOLD_SECONDS = 10.0
HOLD_FIRST_DELAY, HOLD_MAX_DELAY = 0.1, 2.0

Message: TypeAlias = dict[str, Any]


@dataclass(frozen=True)
class CatchUp:
    """What a catch-up from the database sent: the ids, or a reset past history."""

    ids: tuple[int, ...] = ()
    reset: bool = False


@dataclass(frozen=True)
class LostLook:
    """A heartbeat's question to the database for broadcasts an idle relay never got."""

    idle_since: float  # the relay's when asked: an answer is used only if it still is
    after_id: int
    before: datetime

    def newest(self) -> int:
        """The newest id after ``after_id`` sent before ``before``, 0 if none; blocking."""
        return newest_sent_before(self.after_id, self.before)


class SkippedId(RuntimeError):
    """The position was asked to move past an id that no one accounted for (a bug)."""


class Clients(Protocol):
    """The hub, as the relay sees it: its fan-out, which writes what it is handed."""

    def fan_out(self, message: dict[str, Any]) -> None: ...

    def fan_out_batch(self, messages: list[dict[str, Any]]) -> None: ...

    async def sweep(
        self, messages: list[Message], take: Callable[[int], list[Message]], limit: int
    ) -> None: ...


class Relay:
    """Joins the group, then receives for the process and hands each message to ``clients``."""

    def __init__(self, layer: Any, group: str, clients: Clients) -> None:
        self.layer = layer
        self.group = group
        self.channel: str | None = None
        self.restarts = 0
        self.running = False
        # The stream position: the newest id this process's clients were sent, or were
        # told about; only ``_advance`` moves it (and ``start``, before any client).
        self.position = 0
        # Since when a gap waits for history the database cannot give (None: not).
        self.holding_since: float | None = None
        self._clients = clients
        self._task: asyncio.Task[None] | None = None
        self._takes_from_redis: bool | None = None  # known at the first batch
        self._idle_since: float | None = None  # waiting on an empty layer since
        # A receive that had to wait, begun while a batch was collected: the next batch
        # starts with it (after a failure too, so no message it takes is lost).
        self._pending: eager.Started[Message] | None = None
        # Messages a sweep took that could not join it (a topic's, or after a gap),
        # with all after them: the next batch starts with them.
        self._carry: list[Message] = []
        # The rest of a batch (several broadcasts published at once, sent as one
        # message) whose first was handed on: the next receives and polls take these.
        self._unpacked: collections.deque[Message] = collections.deque()
        self._failure: Exception | None = None  # a receive failed while a batch was taken

    @property
    def started(self) -> bool:
        return self._task is not None

    async def start(self) -> int:
        """
        Join the group and start receiving; returns the newest persisted id, read
        after joining, so that no broadcast falls between it and the first received.
        If the layer is away, the relay joins once it is back and catches up.
        """
        pubsub.quiet_reader(self.layer)  # before the first subscription starts the reader
        self.channel = await self.layer.new_channel(prefix=RELAY_PREFIX)
        try:
            await self.layer.group_add(self.group, self.channel)
            joined = True
        except Exception as exc:
            # Redis away, or a pooled connection it closed when it restarted.
            logger.warning("Could not join group %r yet (%s); the relay retries", self.group, exc)
            joined = False
        newest: int = await database_sync_to_async(newest_id)()
        # Receiving starts only from a known position: a broadcast that arrives while
        # the id is read waits in the layer, where it would otherwise look like a gap
        # from 0 (and, past history, a hub.reset that skips ids not yet delivered).
        self.position = max(self.position, newest)
        # Not joined: it joins, and catches up from here, in its supervised loop.
        self._task = asyncio.ensure_future(self._run(lost=not joined))
        return newest

    async def renew(self) -> None:
        """Refresh the membership, which channels-redis expires after ``group_expiry``."""
        if self.channel is not None:
            with contextlib.suppress(Exception):
                await self.layer.group_add(self.group, self.channel)

    def lost_look(self) -> LostLook | None:
        """
        What to ask the database for what the layer lost with nothing after it; None
        while receiving, or restarting (whose recovery catches up itself).
        """
        idle_since = self._idle_since
        if self.channel is None or idle_since is None:
            return None
        if time.monotonic() - idle_since < LOST_AFTER_SECONDS:
            return None
        before = timezone.now() - timedelta(seconds=LOST_AFTER_SECONDS)
        return LostLook(idle_since, self.position, before)

    async def send_lost(self, look: LostLook, newest: int | Exception) -> None:
        """Send from the database what ``look`` found sent a while ago and never received."""
        try:
            if isinstance(newest, Exception):
                raise newest
            if newest <= self.position or self._idle_since != look.idle_since:
                return  # nothing lost; or the relay woke meanwhile: the next heartbeat looks
            caught_up = await self._catch_up(newest)
        except Exception as exc:
            logger.warning("Relay could not look for broadcasts the layer lost (%s)", exc)
            return
        if caught_up.ids:
            logger.warning(
                "Relay missed persisted broadcast(s) %s in the channel layer, with none "
                "after them; sent them from the database",
                ", ".join(str(missed_id) for missed_id in caught_up.ids),
            )

    async def stop(self) -> None:
        """Stop receiving and leave the group, without hanging on either."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        _, stuck = await asyncio.wait([task], timeout=STOP_WAIT_SECONDS)
        if stuck:
            logger.warning("The relay did not stop when cancelled")
        self._set_running(False)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.layer.group_discard(self.group, self.channel), STOP_WAIT_SECONDS
            )

    async def _run(self, *, lost: bool) -> None:
        delay, retry_at_once = RESTART_FIRST_DELAY, True
        while True:
            receiving, recovered = True, False
            try:
                if lost:
                    await self._recover()
                    lost, recovered = False, True
                self._set_running(True)
                while True:
                    receiving = True
                    batch, self._carry = self._carry or [await self._receive()], []
                    # Through the ASGI send a batch is still one write per broadcast, and
                    # handing them over in one loop turn leaves daphne no turn to flush
                    # between them: the public path takes broadcasts one at a time.
                    limit = conf.BROADCAST_COALESCE_MAX if conf.BROADCAST_FAST_PATH else 1
                    from_redis = limit > 1 and self._redis_holds_the_queue()
                    if not from_redis:
                        self._take_held(batch, limit)
                    receiving, delay, retry_at_once = False, RESTART_FIRST_DELAY, True
                    await self._deliver(batch, limit if limit > 1 and not from_redis else 0)
                    failed, self._failure = self._failure, None
                    if failed is not None:  # after delivering what it had taken
                        receiving = True
                        raise failed
                    channel = self.channel or ""  # set by start(), before this task
                    while from_redis:  # no receive is under way: ask Redis for the rest
                        receiving = True
                        more = self._take_unpacked() or [
                            one
                            for message in await redis_layer.take_queued(self.layer, channel, limit)
                            for one in unpacked(message) or [message]
                        ]
                        receiving = False
                        if not more:
                            break
                        await self._deliver(more)
            except asyncio.CancelledError:
                self._set_running(False)
                pending, self._pending = self._pending, None
                if pending is not None:
                    pending.cancel()
                raise
            except Exception as exc:
                self._set_running(False)
                self.restarts += 1
                metrics.relay_restarts.inc()
                lost = True
                if receiving and recovered and retry_at_once:
                    # After Redis restarts, the first command on each pooled connection
                    # fails and the next one reconnects: the layer just answered, so
                    # the backoff that the outage grew would keep it away for nothing.
                    retry_at_once = False
                    logger.warning("Relay lost a stale connection (%s); retrying at once", exc)
                    continue
                if receiving:  # Redis down or restarting: expected, and retried
                    logger.warning(
                        "Relay cannot reach the channel layer (%s); retrying in %.1fs", exc, delay
                    )
                else:
                    logger.exception("Relay failed; restarting in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX_DELAY)

    async def _receive(self) -> Message:
        """The next message, waiting for one if the layer holds none."""
        if self._unpacked:
            return self._unpacked.popleft()
        pending, self._pending = self._pending, None
        if pending is None:
            pending = eager.start(self.layer.receive(self.channel))
        if not pending.done:
            self._idle_since = time.monotonic()
        try:
            return self._unpack(await pending.rest())
        finally:
            self._idle_since = None

    def _poll(self) -> Message | None:
        """
        A message the layer holds now, without waiting; None if it holds none (the
        receive begun for it waits in ``_pending``, and a later poll finishes it once
        a message has arrived) or if a receive failed (kept in ``_failure``).
        """
        if self._unpacked:
            return self._unpacked.popleft()
        if self._failure is not None:
            return None
        pending = self._pending
        try:
            if pending is None:
                pending = eager.start(self.layer.receive(self.channel))
                if not pending.done:
                    self._pending = pending
                    return None
            elif not pending.step():
                return None
        except Exception as exc:
            self._pending, self._failure = None, exc
            return None
        self._pending = None
        return None if pending.value is None else self._unpack(pending.value)

    def _take_unpacked(self) -> list[Message]:
        """What is left of the last batch received, all of it."""
        taken = list(self._unpacked)
        self._unpacked.clear()
        return taken

    def _unpack(self, message: Message) -> Message:
        """``message``, or a batch's first message, keeping the rest for the next takes."""
        inner = unpacked(message)
        if inner is None:
            return message
        self._unpacked.extend(inner[1:])
        return inner[0]

    def _redis_holds_the_queue(self) -> bool:
        """Whether this relay's messages wait in channels-redis core's queue, to take at once."""
        if self._takes_from_redis is None:
            self._takes_from_redis = redis_layer.can_take_queued(self.layer)
        return self._takes_from_redis

    def _take_held(self, batch: list[Message], limit: int) -> None:
        """Add to ``batch`` what the layer holds already, up to ``limit`` messages."""
        while len(batch) < limit:
            message = self._poll()
            if message is None:
                return
            batch.append(message)

    def _take_more(self, room: int) -> list[Message]:
        """
        For a sweep: up to ``room`` messages the layer holds now that can join it, in
        order. The first that cannot (a topic's, or one after a gap, which the
        database fills first) waits for the next batch, and so does all after it.
        """
        taken: list[Message] = []
        if self._carry:
            return taken
        while len(taken) < room:
            message = self._poll()
            if message is None:
                break
            msg_id = message.get("id")
            if message.get("topic") is not None or (
                isinstance(msg_id, int) and msg_id > self.position + 1
            ):
                self._carry.append(message)
                break
            if isinstance(msg_id, int) and not self._advance(msg_id):
                continue  # already sent (a catch-up overlapping the live stream)
            taken.append(message)
        return taken

    async def _deliver(self, batch: list[Message], sweep_limit: int = 0) -> None:
        """
        Fan out a batch in order, filling any gap in its ids from the database first;
        with ``sweep_limit``, its last part is swept, taking what arrives meanwhile.
        """
        ready: list[dict[str, Any]] = []
        since = self.position
        for message in batch:
            msg_id = message.get("id")
            if isinstance(msg_id, int):
                if msg_id > self.position + 1:
                    if ready:
                        self._hand_over(ready, since)
                        ready = []
                    await self._fill_gap(msg_id)
                    since = self.position
                if not self._advance(msg_id):
                    continue  # already sent (the gap's history held it too)
            ready.append(message)
        if ready and sweep_limit:
            try:
                await self._clients.sweep(ready, self._take_more, sweep_limit)
            except Exception:
                self.position = since  # as in _hand_over
                raise
        elif ready:
            self._hand_over(ready, since)

    def _hand_over(self, ready: list[Message], since: int) -> None:
        """Fan out ``ready``; a fan-out that fails puts the position back to ``since``."""
        try:
            self._clients.fan_out_batch(ready)
        except Exception:
            # A bug, not a client (the hub cuts a client whose write fails): the
            # restart's catch-up sends these again from the database.
            self.position = since
            raise

    def _advance(self, msg_id: int, *, accounted: bool = False) -> bool:
        """
        Move the position to ``msg_id``, the one place it moves; False for an id at or
        behind it (already sent). Past more than the next id only when the ids between
        are ``accounted`` for: replayed, burnt (history says never sent), or reset.
        """
        if msg_id <= self.position:
            return False
        if msg_id != self.position + 1 and not accounted:
            raise SkippedId(f"the position {self.position} cannot skip to {msg_id}")
        self.position = msg_id
        return True

    def _set_running(self, running: bool) -> None:
        if running != self.running:
            self.running = running
            metrics.relays_running.inc() if running else metrics.relays_running.dec()

    async def _fill_gap(self, msg_id: int) -> None:
        """
        Ids between the position and ``msg_id`` were lost in the layer (channels-redis
        drops past ``capacity``; pub/sub misses what is published while it resubscribes)
        or burnt by failed sends: send what the database has of them first. While the
        database cannot be read, hold (the live stream waits in the layer) and retry;
        past HOLD_SECONDS, tell clients with ``hub.reset``. Returns with the position
        at ``msg_id - 1`` or past it.
        """
        gap_from = self.position
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HOLD_SECONDS
        delay = HOLD_FIRST_DELAY
        try:
            while True:
                try:
                    # Up to the id before: after a reset, the live one still follows.
                    caught_up = await self._catch_up(msg_id - 1)
                    break
                except Exception as exc:
                    if self.holding_since is None:
                        self._hold(True)
                        logger.warning(
                            "Relay received broadcast %s after %s and cannot read the ids "
                            "between from the database (%s); holding the stream and "
                            "retrying for up to %ss",
                            msg_id,
                            gap_from,
                            exc,
                            HOLD_SECONDS,
                        )
                    if loop.time() + delay > deadline:
                        logger.error(
                            "Relay could not read ids %s to %s from the database for %ss: "
                            "hub.reset",
                            gap_from + 1,
                            msg_id - 1,
                            HOLD_SECONDS,
                        )
                        self._reset(msg_id - 1)
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, HOLD_MAX_DELAY)
        finally:
            self._hold(False)
        # History may already hold ids after ``msg_id`` too: those were not missed.
        missed = [missed_id for missed_id in caught_up.ids if missed_id < msg_id]
        if missed:
            logger.warning(
                "Relay missed persisted broadcast(s) %s in the channel layer; sent them "
                "from the database",
                ", ".join(str(missed_id) for missed_id in missed),
            )

    def _hold(self, holding: bool) -> None:
        if holding == (self.holding_since is not None):
            return
        self.holding_since = time.monotonic() if holding else None
        metrics.relays_holding.inc() if holding else metrics.relays_holding.dec()

    async def _recover(self) -> None:
        """
        Join the group again (a restarted Redis has forgotten it) and send clients
        every persisted broadcast they missed while the relay was away. Ephemeral
        broadcasts from that time are gone: they were never stored.
        """
        await self.layer.group_add(self.group, self.channel)
        newest = await database_sync_to_async(newest_id)()
        caught_up = await self._catch_up(newest)
        if not caught_up.reset:
            logger.warning("Relay is back; %s persisted broadcast(s) caught up", len(caught_up.ids))

    async def _catch_up(self, newest: int) -> CatchUp:
        """
        Fan out every persisted broadcast after the position, up to at least
        ``newest``; or, when they are no longer all in history, ``hub.reset``. A
        database failure raises, and the position stays where it was.
        """
        missed = await database_sync_to_async(replay_after)(self.position, newest)
        if missed is None:
            logger.warning("Relay missed broadcasts beyond history: hub.reset")
            self._reset(newest)
            return CatchUp(reset=True)
        for replayed in missed:
            if self._advance(replayed.id, accounted=True):  # burnt ids between: never sent
                self._clients.fan_out(relay_message(replayed.text, replayed.id, replayed.topic))
        self._advance(newest, accounted=True)  # history runs to it: the rest were burnt
        return CatchUp(ids=tuple(replayed.id for replayed in missed))

    def _reset(self, newest: int) -> None:
        """Tell clients that the ids after the position up to ``newest`` are lost to them."""
        if newest <= self.position:
            return
        text = reset_text(newest, self.position)
        metrics.resets.inc()
        self._advance(newest, accounted=True)
        self._clients.fan_out(relay_message(text, None))
