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
import types
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from . import metrics, tuning
from .conf import conf
from .envelope import control_text
from .transport import Writer, text_frame

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]

CLOSE_SERVICE_RESTART = 1012
RELAY_PREFIX = "broadcast-relay"


class Outbox:
    """
    One client's bounded send buffer (the Go hub's ``send`` channel and ``writePump``).

    ``push`` never blocks the fan-out. With a direct writer (see
    :mod:`broadcast.transport`), the prepared frame goes straight to the client's
    transport, and what the transport holds unsent is the client's backlog. Without
    one, the server's ASGI ``send`` runs to completion inside ``push`` while the
    client keeps up (uvicorn's suspends only when the socket's buffer is over its
    high-water mark); only a send that does suspend continues in a task, with later
    frames queued behind it. Past ``max_pending`` bytes of backlog, the outbox closes
    itself and calls ``on_overflow`` instead of growing.
    """

    __slots__ = (
        "_send", "_writer", "_queue", "_pending", "_max_pending", "_on_overflow",
        "_drainer", "_held", "_replayed_through", "closed",
    )  # fmt: skip

    def __init__(
        self,
        send: Send,
        max_pending: int,
        on_overflow: Callable[[], None],
        writer: Writer | None = None,
    ) -> None:
        self._send = send
        self._writer = writer
        # Created when the client first falls behind: an empty deque is about 600
        # bytes, and most clients never need one.
        self._queue: deque[tuple[dict[str, Any], int]] | None = None
        self._pending = 0
        self._max_pending = max_pending
        self._on_overflow = on_overflow
        self._drainer: asyncio.Task | None = None
        self._held: list[tuple[bytes, dict[str, Any], int, int | None]] | None = None
        self._replayed_through = 0
        self.closed = False

    @property
    def writer(self) -> Writer | None:
        return self._writer

    @property
    def pending(self) -> int:
        """Bytes accepted for this client but not yet taken by its socket."""
        buffered = self._writer.buffered() if self._writer is not None else 0
        return self._pending + buffered

    def push_text(self, text: str) -> None:
        data = text.encode()
        self.push(text_frame(data), {"type": "websocket.send", "text": text}, len(data))

    def push(
        self, frame: bytes, event: dict[str, Any], size: int, msg_id: int | None = None
    ) -> None:
        """
        Send one message: ``frame`` is it prepared for a direct writer, ``event`` the
        same as an ASGI send event. Both are shared between clients, never mutated.
        """
        if self.closed:
            return
        if msg_id is not None and msg_id <= self._replayed_through:
            return  # sent from history already; its live copy can arrive later still
        if self._held is not None:
            if self._reserve(size):
                self._held.append((frame, event, size, msg_id))
            return
        writer = self._writer
        if writer is not None and self._drainer is None:
            buffered = writer.buffered()
            if buffered + size > self._max_pending:
                self._overflow()
                return
            if writer.write(frame, buffered):
                return
        if self._drainer is not None:
            if self._reserve(size):
                if self._queue is None:
                    self._queue = deque()
                self._queue.append((event, size))
            return
        coroutine = self._send(event)
        try:
            blocked_on = coroutine.send(None)
        except StopIteration:
            return  # written, with no task and no wake-up
        except Exception as exc:
            logger.debug("Send to a client failed (%s); dropping it", exc)
            self.close()
            return
        self._pending += size
        self._drainer = asyncio.ensure_future(self._drain(coroutine, blocked_on, size))

    async def _drain(self, coroutine: Any, blocked_on: Any, size: int) -> None:
        try:
            await _finish(coroutine, blocked_on)
            self._pending -= size
            queue = self._queue  # no await between this read and the loop's test
            while queue and not self.closed:
                event, size = queue.popleft()
                await self._send(event)
                self._pending -= size
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("Send to a client failed (%s); dropping it", exc)
            self.close()
        finally:
            self._drainer = None

    def _reserve(self, size: int) -> bool:
        """Count ``size`` more bytes waiting here; past the bound, cut the client."""
        self._pending += size
        if self._pending > self._max_pending:
            self._overflow()
            return False
        return True

    def hold(self) -> None:
        """Keep live messages back (while history is replayed ahead of them)."""
        if self._held is None:
            self._held = []

    @property
    def holding(self) -> bool:
        return self._held is not None

    def release(self, after_id: int | None) -> None:
        """
        Send what was held, and from now on skip ids up to ``after_id``: those were
        replayed from history, and a live copy may still be on its way (an id is
        committed before it is sent, so history can be ahead of the live stream).
        """
        if after_id is not None:
            self._replayed_through = max(self._replayed_through, after_id)
        held, self._held = self._held or [], None
        for frame, event, size, msg_id in held:
            self._pending -= size
            self.push(frame, event, size, msg_id)

    def _overflow(self) -> None:
        on_overflow = self._on_overflow
        self.close()
        on_overflow()

    def close(self) -> None:
        self.closed = True
        # The callback is usually a bound method of the consumer that holds this
        # outbox: dropping it breaks that cycle, so a closed connection's objects are
        # freed as soon as it ends instead of waiting for a full garbage collection.
        self._on_overflow = _closed
        if self._queue is not None:
            self._queue.clear()
        self._held = None
        self._pending = 0
        drainer = self._drainer
        if drainer is not None and drainer is not _current_task():
            drainer.cancel()


def _closed() -> None:
    pass


def _current_task() -> asyncio.Task | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


@types.coroutine
def _finish(coroutine: Any, blocked_on: Any) -> Any:
    """
    Finish a coroutine whose first step already ran and suspended on ``blocked_on``:
    hand that future to the running task, as the coroutine's own ``await`` would
    have, then resume the coroutine (the same steps an eagerly started task takes).
    """
    try:
        yield blocked_on
    except BaseException:
        coroutine.close()
        raise
    return (yield from coroutine)


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

    # Register and unregister -------------------------------------------------

    async def register(
        self, outbox: Outbox, welcome: Callable[[int], str], *, hold: bool = False
    ) -> None:
        """
        Add a client. The first one in the process joins the group; then the client
        gets its welcome frame (built by ``welcome(last_id)``) and every broadcast
        relayed after it, with nothing in between.
        """
        # The lock only matters while the process joins or leaves the group; a
        # joined process registers without it (an uncontended asyncio.Lock still
        # costs a few microseconds a connect, and a queue of waiters after a join).
        if self._relay_task is None or self._membership.locked():
            async with self._membership:
                if self._relay_task is None:
                    await self._join()
        self._ensure_heartbeat()
        # No await from here on: the welcome's last id and the first relayed
        # broadcast cannot be interleaved.
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

    async def unregister(self, outbox: Outbox) -> None:
        """Remove a client; the last one in the process leaves the group."""
        if outbox in self.clients:
            self.clients.remove(outbox)
            metrics.connections.dec()
            if not self.stopping:  # collecting garbage on the way out is wasted time
                tuning.connection_closed(len(self.clients))
        if self.clients:
            return  # not the last one: the membership stays
        async with self._membership:
            if not self.clients and self._relay_task is not None:
                await self._leave()

    async def _join(self) -> None:
        self.relay_channel = await self.layer.new_channel(prefix=RELAY_PREFIX)
        await self.layer.group_add(self.group, self.relay_channel)
        self._relay_task = asyncio.ensure_future(self._relay())
        # Read the last id only after joining, so that no broadcast falls between.
        self.last_id = max(self.last_id, await _last_sent_id())

    async def _leave(self) -> None:
        task, self._relay_task = self._relay_task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await self.layer.group_discard(self.group, self.relay_channel)
        except Exception as exc:  # the membership expires on its own in the layer
            logger.warning("Could not leave group %r: %s", self.group, exc)
        self.relay_channel = None

    # Relay and fan-out -------------------------------------------------------

    async def _relay(self) -> None:
        """Receive each broadcast once for this process and fan it out."""
        delay, lost = 0.5, False
        while True:
            try:
                if lost:
                    await self._recover()
                    lost, delay = False, 0.5
                message = await self.layer.receive(self.relay_channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The layer is unreachable (Redis down): keep the process up and retry.
                logger.warning(
                    "Relay cannot reach the channel layer (%s); retrying in %.1fs", exc, delay
                )
                lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            msg_id = message.get("id")
            if isinstance(msg_id, int) and msg_id > self.last_id + 1:
                await self._fill_gap(msg_id)
            self.fan_out(message)

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
        if missed is not None and any(missed_id < msg_id for missed_id in missed):
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
        from .history import newest_id

        await self.layer.group_add(self.group, self.relay_channel)
        newest = await database_sync_to_async(newest_id)()
        missed = await self._catch_up(newest)
        if missed is not None:
            logger.warning("Relay is back; %s persisted broadcast(s) caught up", len(missed))

    async def _catch_up(self, newest: int) -> list[int] | None:
        """
        Fan out every persisted broadcast after ``last_id`` from the database; the
        ids sent, or None when they are beyond history and clients got hub.reset.
        """
        from .history import replay_after

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
        started = time.perf_counter()
        # Framed once for every client in this process.
        data = text.encode()
        frame, event, size = text_frame(data), {"type": "websocket.send", "text": text}, len(data)
        clients = tuple(self.clients)
        for outbox in clients:
            outbox.push(frame, event, size, msg_id)
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
        from .models import ConnectionSample, HubProcess

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
        """Stop the relay and heartbeat (tests, and shutdown)."""
        relay, self._relay_task = self._relay_task, None
        heartbeat, self._heartbeat_task = self._heartbeat_task, None
        for task in (heartbeat, relay):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if relay is not None:
            with contextlib.suppress(Exception):
                await self.layer.group_discard(self.group, self.relay_channel)


@database_sync_to_async
def _last_sent_id() -> int:
    from .history import newest_id

    return newest_id()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProcessHub] = (
    weakref.WeakKeyDictionary()
)


def get_hub() -> ProcessHub:
    """The hub of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = ProcessHub()
        from . import shutdown

        shutdown.install(hub)
    return hub


def existing_hub() -> ProcessHub | None:
    """The running loop's hub if one was created, without creating it."""
    try:
        return _hubs.get(asyncio.get_running_loop())
    except RuntimeError:
        return None
