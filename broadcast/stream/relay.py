"""
The relay: this process's one member of the broadcast group, and the one owner of its
stream position (the position and the steps that move it are in
:mod:`broadcast.stream.position`). It receives each broadcast once, forms batches,
and hands each to its position, which finds gaps, fills them and hands the hub's
fan-out what to write.

It is supervised: a failure is logged, retried with a growing delay, and followed by
a catch-up from the database, since what the layer held meanwhile may be gone.

It coalesces: after each receive, it takes every message the layer already holds
(up to COALESCE_MAX) without waiting for any, and hands them on together,
so that a burst costs each client one write instead of one per broadcast. A fan-out
to many clients lets the loop run between chunks of them, and takes what reached the
layer meanwhile into the writes still to come (the hub's ``sweep``). A lone broadcast
goes out at once: nothing waits to form a batch. On channels-redis's core layer, whose
receive takes one message per Redis round trip, what Redis holds is taken in one
round trip after the fan-out instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.db import DatabaseError

from broadcast import metrics
from broadcast.conf import conf
from broadcast.history import newest_id, recent_revocations
from broadcast.seams.layers import pubsub
from broadcast.stream.position import Stream
from broadcast.stream.receiver import Receiver

if TYPE_CHECKING:
    from broadcast.stream.fanout import Clients

logger = logging.getLogger(__name__)

RELAY_PREFIX = "broadcast-relay"
# The restart backoff after a failure (the layer unreachable, or a bug).
RESTART_FIRST_DELAY, RESTART_MAX_DELAY = 0.5, 5.0
# How long stopping waits for a cancelled task: channels-redis's receive can swallow
# a cancellation inside redis-py's retry and carry on, and a stop must not hang on it.
STOP_WAIT_SECONDS = 2.0
# Most broadcasts ready together that go to a client in one write (a sweep's too).
COALESCE_MAX = 64


class Relay(Stream):
    """Joins the group, then receives for the process and hands each batch to its position."""

    def __init__(self, layer: Any, group: str, clients: Clients) -> None:
        super().__init__(clients)
        self.layer = layer
        self.group = group
        self.receiver = Receiver(layer)
        self.restarts = 0
        self.running = False
        self._task: asyncio.Task[None] | None = None

    @property
    def channel(self) -> str | None:
        """This process's channel in the group (set by ``start``)."""
        return self.receiver.channel

    @channel.setter
    def channel(self, channel: str | None) -> None:
        self.receiver.channel = channel

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
        try:
            newest: int = await database_sync_to_async(newest_id)()
            revoked = await database_sync_to_async(recent_revocations)(newest)
        except DatabaseError:
            # No position, no relay: the next client starts it again. Its channel
            # leaves the group, or every attempt during an outage would add one.
            with contextlib.suppress(Exception):
                await self.layer.group_discard(self.group, self.channel)
            self.channel = None
            raise
        # Receiving starts only from a known position: a broadcast that arrives while
        # the id is read waits in the layer, where it would otherwise look like a gap
        # from 0 (and, past history, a hub.reset that skips ids not yet delivered).
        self.position = max(self.position, newest)
        self.recent.skipped(self.position)  # what came before is the database's
        for owner, ago in revoked:  # sent before it joined: a connect in flight may predate one
            self._clients.note_revoked(owner, time.monotonic() - ago)
        # Not joined: it joins, and catches up from here, in its supervised loop.
        self._task = asyncio.ensure_future(self._run(lost=not joined))
        return newest

    async def renew(self) -> None:
        """Refresh the membership, which channels-redis expires after ``group_expiry``."""
        if self.channel is not None:
            with contextlib.suppress(Exception):
                await self.layer.group_add(self.group, self.channel)

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
                    batch, self._carry = self._carry or [await self.receiver.receive()], []
                    # Through the ASGI send a batch is still one write per broadcast, and
                    # handing them over in one loop turn leaves daphne no turn to flush
                    # between them: the public path takes broadcasts one at a time.
                    limit = COALESCE_MAX if conf.BROADCAST_FAST_PATH else 1
                    from_redis = limit > 1 and self.receiver.redis_holds_the_queue()
                    if not from_redis:
                        self.receiver.take_held(batch, limit)
                    receiving, delay, retry_at_once = False, RESTART_FIRST_DELAY, True
                    await self._deliver(batch, limit if limit > 1 and not from_redis else 0)
                    failed = self.receiver.failure()
                    if failed is not None:  # after delivering what it had taken
                        receiving = True
                        raise failed
                    while from_redis:  # no receive is under way: ask Redis for the rest
                        receiving = True
                        more = await self.receiver.take_queued(limit)
                        receiving = False
                        if not more:
                            break
                        await self._deliver(more)
            except asyncio.CancelledError:
                self._set_running(False)
                self.receiver.cancel()
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

    def _set_running(self, running: bool) -> None:
        if running != self.running:
            self.running = running
            metrics.relays_running.inc() if running else metrics.relays_running.dec()

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
