"""
The process hub: one group membership and one fan-out per server process.

A port of the Go hub (register, unregister, broadcast, a bounded send buffer per
client) onto Channels. The channel layer carries each broadcast between processes;
inside a process, one relay channel is the only member of the broadcast group, and
the relay writes the already-serialised envelope into each local client's outbox.
There is no channel-layer queue per client, no JSON work per client, and no
database call on the delivery path.

Each event loop has its own hub (daphne and uvicorn run one loop per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from . import metrics, shutdown, tuning
from .conf import conf
from .envelope import control_text
from .history import newest_id, replay_after
from .models import ConnectionSample, HubProcess
from .outbox import Outbox, Outgoing

logger = logging.getLogger(__name__)

CLOSE_SERVICE_RESTART = 1012
RELAY_PREFIX = "broadcast-relay"
# The relay's restart backoff after a failure (the layer unreachable, or a bug).
RESTART_FIRST_DELAY, RESTART_MAX_DELAY = 0.5, 5.0
# How long stopping waits for a cancelled task: channels-redis's receive can swallow
# a cancellation inside redis-py's retry and carry on, and a stop must not hang on it.
STOP_WAIT_SECONDS = 2.0


class ProcessHub:
    """Registry of this process's clients, its relay, and its connection counts."""

    def __init__(self) -> None:
        self.clients: set[Outbox] = set()
        self.layer = get_channel_layer(conf.BROADCAST_CHANNEL_LAYER)
        self.group = conf.BROADCAST_GROUP
        self.relay_channel: str | None = None
        self.last_id = 0
        self.peak = 0
        self.total_accepted = 0
        self.slow_client_cuts = 0
        self.relay_restarts = 0
        self.relay_running = False
        self.started_at = timezone.now()
        self.row_id: int | None = None
        self._sampled_at: float | None = None
        self.stopping = False
        self._membership = asyncio.Lock()
        self._relay_task: asyncio.Task | None = None
        self._heartbeat_task: asyncio.Task | None = None

    @property
    def current(self) -> int:
        return len(self.clients)

    @property
    def relay_state(self) -> str:
        """idle (no client yet), running, restarting (after a failure) or stopped."""
        if self._relay_task is None:
            return "stopped" if self.stopping else "idle"
        return "running" if self.relay_running else "restarting"

    # Register and unregister -------------------------------------------------

    async def register(
        self,
        outbox: Outbox,
        welcome: Callable[[int], str],
        *,
        hold: bool = False,
        limit: int | None = None,
    ) -> bool:
        """
        Add a client, unless the process already has ``limit`` clients (False). The
        first one in the process joins the group; then the client gets its welcome
        frame (built by ``welcome(last_id)``) and every broadcast relayed after it,
        with nothing in between.
        """
        # The lock only matters while the process joins the group, which ends with
        # reading the last id: a client that came meanwhile waits for it. A joined
        # process registers without it (an uncontended asyncio.Lock still costs a
        # few microseconds a connect, and a queue of waiters after a join).
        if self._relay_task is None or self._membership.locked():
            async with self._membership:
                if self._relay_task is None:
                    await self._join()
        self._ensure_heartbeat()
        # No await from here on: the limit holds for a burst of connects, and the
        # welcome's last id and the first relayed broadcast cannot be interleaved.
        if limit is not None and len(self.clients) >= limit:
            return False
        outbox.push_text(welcome(self.last_id))
        if hold:
            outbox.hold()
        self.clients.add(outbox)
        tuning.connection_opened()
        self.total_accepted += 1
        metrics.connections.inc()
        metrics.connections_accepted.inc()
        if len(self.clients) > self.peak:
            self.peak = len(self.clients)
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
            metrics.connections.dec()
            if not self.stopping:  # collecting garbage on the way out is wasted time
                tuning.connection_closed(len(self.clients))

    async def _join(self) -> None:
        self.relay_channel = await self.layer.new_channel(prefix=RELAY_PREFIX)
        try:
            await self.layer.group_add(self.group, self.relay_channel)
            joined = True
        except Exception as exc:
            # Redis away, or a pooled connection it closed when it restarted: the
            # relay joins when it can and sends clients what they missed meanwhile.
            logger.warning("Could not join group %r yet (%s); the relay retries", self.group, exc)
            joined = False
        if not joined:  # the relay catches up from this id once it has joined
            self.last_id = max(self.last_id, await database_sync_to_async(newest_id)())
        self._relay_task = asyncio.ensure_future(self._relay(joined=joined))
        if joined:  # read only after joining, so that no broadcast falls between
            self.last_id = max(self.last_id, await database_sync_to_async(newest_id)())

    # Relay and fan-out -------------------------------------------------------

    async def _relay(self, *, joined: bool = True) -> None:
        """
        Receive each broadcast once for this process and fan it out, for as long as
        the process serves. Supervised: a failure (the layer unreachable, or a bug)
        is logged, the relay waits with a growing delay, joins the group again and
        sends clients what they missed from the database, then goes on.
        """
        delay, lost = RESTART_FIRST_DELAY, not joined
        while True:
            receiving = True
            try:
                if lost:
                    await self._recover()
                    lost = False
                self._set_running(True)
                while True:
                    receiving = True
                    message = await self.layer.receive(self.relay_channel)
                    receiving, delay = False, RESTART_FIRST_DELAY
                    msg_id = message.get("id")
                    if isinstance(msg_id, int) and msg_id > self.last_id + 1:
                        await self._fill_gap(msg_id)
                    self.fan_out(message)
            except asyncio.CancelledError:
                self._set_running(False)
                raise
            except Exception as exc:
                self._set_running(False)
                self.relay_restarts += 1
                metrics.relay_restarts.inc()
                if receiving:  # Redis down or restarting: expected, and retried
                    logger.warning(
                        "Relay cannot reach the channel layer (%s); retrying in %.1fs", exc, delay
                    )
                else:
                    logger.exception("Relay failed; restarting in %.1fs", delay)
                lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX_DELAY)

    def _set_running(self, running: bool) -> None:
        if running != self.relay_running:
            self.relay_running = running
            metrics.relays_running.inc() if running else metrics.relays_running.dec()

    async def _fill_gap(self, msg_id: int) -> None:
        """
        Persisted ids are sent in order under the send lock, so a relay that receives
        ``msg_id`` after ``last_id`` with ids between them either was sent those and
        lost them in the layer (channels-redis drops messages past ``capacity``, and
        a relay stalled past BROADCAST_RELAY_STALL_SECONDS is not waited for) or they
        were burnt by failed sends. Read them from the database first: nothing lost.
        """
        gap_from = self.last_id
        try:
            # Up to the id before: after a reset, the live one still follows.
            missed = await self._catch_up(msg_id - 1)
        except Exception as exc:
            logger.warning(
                "Relay received broadcast %s after %s and could not read the ids between "
                "from the database (%s); clients that miss them can resume later",
                msg_id,
                gap_from,
                exc,
            )
            return
        if missed and any(missed_id < msg_id for missed_id in missed):
            logger.warning(
                "Relay missed persisted broadcast(s) %s in the channel layer; sent them "
                "from the database",
                ", ".join(str(missed_id) for missed_id in missed if missed_id < msg_id),
            )

    async def _recover(self) -> None:
        """
        Join the group again (a restarted Redis has forgotten it) and send local
        clients every persisted broadcast they missed while the relay was away.
        Ephemeral broadcasts from that time are gone: they were never stored.
        """
        await self.layer.group_add(self.group, self.relay_channel)
        newest = await database_sync_to_async(newest_id)()
        missed = await self._catch_up(newest)
        if missed is not None:
            logger.warning("Relay is back; %s persisted broadcast(s) caught up", len(missed))

    async def _catch_up(self, newest: int) -> list[int] | None:
        """
        Fan out every persisted broadcast after ``last_id`` from the database; the
        ids sent, or None when they were beyond history and clients got hub.reset.
        """
        missed = await database_sync_to_async(replay_after)(self.last_id, newest)
        if missed is None:
            logger.warning("Relay missed broadcasts beyond history: hub.reset")
            text = control_text(
                "hub.reset", {"last_id": newest, "from": self.last_id}, timezone.now()
            )
            self.last_id = newest
            self.fan_out({"type": "broadcast.message", "id": None, "text": text})
            return None
        for missed_id, text in missed:
            self.fan_out({"type": "broadcast.message", "id": missed_id, "text": text})
        return [missed_id for missed_id, _ in missed]

    def fan_out(self, message: dict[str, Any]) -> None:
        text = message.get("text")
        if message.get("type") != "broadcast.message" or not isinstance(text, str):
            logger.warning(
                "Ignored a group message that is not a broadcast.message with a 'text' "
                "envelope: %r",
                {key: message.get(key) for key in ("type", "id")},
            )
            return
        msg_id = message.get("id")
        if isinstance(msg_id, int):
            if msg_id <= self.last_id:
                return  # already delivered (a catch-up overlapping the live stream)
            self.last_id = msg_id
        else:
            msg_id = None
        started = time.perf_counter()
        outgoing = Outgoing.of_text(text, msg_id)  # framed once for every client
        clients = tuple(self.clients)
        for outbox in clients:
            try:
                outbox.push(outgoing)
            except Exception:  # one client's failure must not cost the others
                logger.exception("Delivery to a client failed; cutting it so it resumes")
                with contextlib.suppress(Exception):
                    outbox.cut()
        metrics.deliveries.inc(len(clients))
        metrics.fan_out_seconds.observe(time.perf_counter() - started)

    # Connection counts -------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat_task is None:
            self._heartbeat_task = asyncio.ensure_future(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.write_counts()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("Could not write the connection-count row: %s", exc)
            if self.relay_channel is not None:
                # Refresh the membership, which channels-redis expires after
                # group_expiry (a day by default).
                with contextlib.suppress(Exception):
                    await self.layer.group_add(self.group, self.relay_channel)
            await asyncio.sleep(conf.BROADCAST_HEARTBEAT_SECONDS)

    async def write_counts(self, *, stopped: bool = False) -> None:
        await database_sync_to_async(self._write_counts)(stopped)

    def _write_counts(self, stopped: bool) -> None:
        # Counts are read when the write runs, not when it was queued, so that a
        # write waiting behind another never lands older figures over newer ones.
        now = timezone.now()
        fields = {
            "current": self.current,
            "peak": self.peak,
            "total_accepted": self.total_accepted,
            "last_heartbeat": now,
            "stopped_at": now if stopped else None,
        }
        if self.row_id is None or not HubProcess.objects.filter(pk=self.row_id).update(**fields):
            row = HubProcess.objects.create(
                host=socket.gethostname(), pid=os.getpid(), started_at=self.started_at, **fields
            )
            self.row_id = row.pk
        clock = time.monotonic()
        if (
            stopped
            or self._sampled_at is None
            or clock - self._sampled_at >= conf.BROADCAST_SAMPLE_SECONDS
        ):
            ConnectionSample.objects.create(
                process_id=self.row_id, taken_at=now, current=fields["current"]
            )
            self._sampled_at = clock

    async def shutdown(self) -> None:
        """
        Close every client with 1012 (service restart), in batches spread over half of
        BROADCAST_SHUTDOWN_TIMEOUT so that their reconnects do not hit the remaining
        servers all at once; then stop and mark this process's row stopped.
        """
        self.stopping = True  # from now on, connects are turned away (consumers.py)
        outboxes = list(self.clients)
        timeout = conf.BROADCAST_SHUTDOWN_TIMEOUT
        batches = max(1, min(20, len(outboxes) // 100))
        size = -(-len(outboxes) // batches) if outboxes else 1
        logger.info("Shutting down: closing %s client(s) in %s batch(es)", len(outboxes), batches)
        for start in range(0, len(outboxes), size):
            for outbox in outboxes[start : start + size]:
                if outbox.writer is not None:
                    try:
                        outbox.writer.close(CLOSE_SERVICE_RESTART, "service restart")
                    except Exception as exc:  # one client must not stop the rest
                        logger.debug("Could not close a client on shutdown: %s", exc)
                outbox.close()
            if start + size < len(outboxes):
                await asyncio.sleep(timeout / 2 / batches)
        await asyncio.sleep(min(0.5, timeout / 4))  # let the close frames go out
        metrics.connections.dec(len(self.clients))
        self.clients.clear()
        metrics.process_stopped()
        await self.close()
        try:
            await self.write_counts(stopped=True)
        except Exception as exc:
            logger.warning("Could not mark this process stopped: %s", exc)

    async def close(self) -> None:
        """Stop the relay and heartbeat (tests, and shutdown), without hanging on either."""
        relay, self._relay_task = self._relay_task, None
        heartbeat, self._heartbeat_task = self._heartbeat_task, None
        tasks = [task for task in (heartbeat, relay) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_WAIT_SECONDS)
            if stuck:
                logger.warning("%s hub task(s) did not stop when cancelled", len(stuck))
        self._set_running(False)
        if relay is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.layer.group_discard(self.group, self.relay_channel), STOP_WAIT_SECONDS
                )


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProcessHub] = (
    weakref.WeakKeyDictionary()
)


def get_hub() -> ProcessHub:
    """The hub of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = ProcessHub()
        shutdown.install(hub)
    return hub


def existing_hub() -> ProcessHub | None:
    """The running loop's hub if one was created, without creating it."""
    try:
        return _hubs.get(asyncio.get_running_loop())
    except RuntimeError:
        return None
