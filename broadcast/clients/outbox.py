"""
One client's bounded send buffer: the Go hub's ``send`` channel and ``writePump``.

The fan-out hands each client one :class:`Outgoing` message, framed once for every
client of the process. ``Outbox.push`` never blocks the fan-out and never raises
into it: a client whose write fails costs that client, not the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from broadcast.seams.servers import Writer
from broadcast.seams.servers.asgi import close_through_send
from broadcast.stream.outgoing import Outgoing

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]

# How often a paced writer looks at a client's backlog while it waits for it to drain.
DRAIN_POLL_SECONDS = 0.005


class Outbox:
    """
    With a direct writer (see :mod:`broadcast.seams.servers`), a message goes straight to
    the client's transport, and what the transport holds unsent is the client's
    backlog. Without one (the public path), messages queue for the client's writer
    task, which awaits the server's ASGI ``send`` for each in turn. Past
    ``max_pending`` bytes of backlog, the outbox closes itself and calls
    ``on_overflow`` instead of growing.

    While a client resumes, live messages are *held* and history is written ahead of
    them with :meth:`write_paced`, which waits for the client to read instead of
    counting history against the slow-client bound.
    """

    __slots__ = (
        "_send", "_writer", "_queue", "_queued_bytes", "_max_pending", "_on_overflow",
        "_drainer", "_held", "_held_bytes", "_replayed_through", "closed", "on_end",
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
        self._queue: deque[Outgoing] | None = None
        self._queued_bytes = 0
        self._max_pending = max_pending
        self._on_overflow = on_overflow
        self._drainer: asyncio.Task[None] | None = None
        self._held: list[Outgoing] | None = None
        self._held_bytes = 0
        self._replayed_through = 0
        self.closed = False
        # Called once by end(), with the close code and reason (its owner closes it).
        self.on_end: Callable[[int, str], None] = _closed

    @property
    def writer(self) -> Writer | None:
        return self._writer

    @property
    def pending(self) -> int:
        """Bytes accepted for this client but not yet taken by its socket."""
        return self._queued_bytes + self._buffered()

    def push_text(self, text: str) -> None:
        self.push(Outgoing.of_text(text))

    def push(self, message: Outgoing) -> None:
        """Send one message, or hold it while history is replayed ahead of it."""
        if self.closed:
            return
        if message.parts:
            self._push_batch(message)
            return
        if message.id is not None and message.id <= self._replayed_through:
            return  # sent from history already; its live copy can arrive later still
        if self._held is not None:
            self._held_bytes += message.size
            if self._held_bytes > self._max_pending:
                self._overflow()
            else:
                self._held.append(message)
            return
        self._write(message, bounded=True)

    def _push_batch(self, batch: Outgoing) -> None:
        """
        A batch in one write when the client can take it whole now; otherwise its
        messages one by one, exactly as if they had been pushed apart (so the slow
        client bound, holding and the replayed ids apply to each).
        """
        writer = self._writer
        if (
            writer is not None
            and writer.writes_itself
            and self._drainer is None
            and self._held is None
            and (batch.id is None or batch.id > self._replayed_through)
        ):
            try:
                buffered = writer.buffered()
                if buffered + batch.size <= self._max_pending and writer.write(
                    batch.frame, buffered
                ):
                    return
            except Exception as exc:  # a server internal that changed under us
                self._degrade(exc)
        for message in batch.parts:
            self.push(message)

    def _write(self, message: Outgoing, *, bounded: bool) -> None:
        writer = self._writer
        # A writer that writes itself must not pass what queued for the writer task;
        # one that only counts (daphne's public path) counts every message.
        if writer is not None and (self._drainer is None or not writer.writes_itself):
            try:
                buffered = writer.buffered()
                if bounded and buffered + message.size > self._max_pending:
                    self._overflow()
                    return
                if writer.write(message.frame, buffered):
                    return
            except Exception as exc:  # a server internal that changed under us
                self._degrade(exc)
        # The public path: the ASGI send runs in this client's own writer task, which
        # starts and finishes it (context variables, cancel scopes and timeouts a
        # server ties to a task hold), and drains what queued behind it.
        self._queued_bytes += message.size
        if bounded and self._queued_bytes > self._max_pending:
            self._overflow()
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append(message)
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())

    def _degrade(self, exc: Exception) -> None:
        """A direct writer failed: this client goes on through the ASGI send."""
        logger.warning(
            "Direct write to a client failed (%s: %s); using the ASGI send for it",
            type(exc).__name__,
            exc,
        )
        self._writer = None

    def _buffered(self) -> int:
        if self._writer is None:
            return 0
        try:
            return self._writer.buffered()
        except Exception as exc:
            self._degrade(exc)
            return 0

    async def _drain(self) -> None:
        try:
            queue = self._queue  # no await between this read and the loop's test
            while queue and not self.closed:
                message = queue.popleft()
                await self._send(message.event)  # type: ignore[arg-type]
                self._queued_bytes -= message.size
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("Send to a client failed (%s); dropping it", exc)
            self.close()
        finally:
            self._drainer = None

    # Resume: history ahead of the live stream --------------------------------

    def hold(self) -> None:
        """Keep live messages back (while history is replayed ahead of them)."""
        if self._held is None:
            self._held = []
            self._held_bytes = 0

    @property
    def holding(self) -> bool:
        return self._held is not None

    async def write_paced(self, message: Outgoing, deadline: float) -> bool:
        """
        Write a replayed message ahead of anything held, once the client's backlog
        leaves room for it; False if the outbox closed or the client did not read
        before ``deadline`` (the loop's clock).
        """
        room = max(self._max_pending - message.size, self._max_pending // 2)
        loop = asyncio.get_running_loop()
        while not self.closed and self.pending > room:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        if self.closed:
            return False
        self._write(message, bounded=False)
        return not self.closed

    async def release_paced(self, after_id: int | None, deadline: float) -> bool:
        """
        :meth:`release` once the client's backlog leaves room for all that was held
        (history written ahead of it may still be in flight); False if the outbox
        closed or the client did not read before ``deadline``.
        """
        loop = asyncio.get_running_loop()
        while not self.closed and self.pending + self._held_bytes > self._max_pending:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        if self.closed:
            return False
        self.release(after_id)
        return True

    def release(self, after_id: int | None) -> None:
        """
        Send what was held, and from now on skip ids up to ``after_id``: those were
        replayed from history, and a live copy may still be on its way (an id is
        committed before it is sent, so history can be ahead of the live stream).
        """
        if after_id is not None:
            self._replayed_through = max(self._replayed_through, after_id)
        held, self._held = self._held or [], None
        self._held_bytes = 0
        for message in held:
            self.push(message)

    # Closing -------------------------------------------------------------------

    async def close_through_send(self, code: int, reason: str, until: float | None = None) -> None:
        """
        Close the outbox, then the connection through the ASGI ``send``. With ``until``
        (the loop's clock), what is queued for the client goes out first, for as long
        as it reads before then: closing drops the queue.
        """
        drainer = self._drainer
        if until is not None and drainer is not None:
            left = until - asyncio.get_running_loop().time()
            await asyncio.wait([drainer], timeout=max(0.0, left))
        self.close()
        await close_through_send(self._send, code, reason)

    def cut(self) -> None:
        """Close as a slow client: the owner's ``on_overflow`` says so to the client."""
        self._overflow()

    def end(self, code: int, reason: str) -> None:
        """
        Close now, so that nothing more reaches the client (a revocation), and have the
        owner close the connection with ``code``.
        """
        on_end = self.on_end
        self.close()
        on_end(code, reason)

    def _overflow(self) -> None:
        on_overflow = self._on_overflow
        self.close()
        on_overflow()

    def close(self) -> None:
        self.closed = True
        # The callback is usually a bound method of the consumer that holds this
        # outbox: dropping it breaks that cycle, so a closed connection's objects are
        # freed as soon as it ends instead of waiting for a full garbage collection.
        self._on_overflow = self.on_end = _closed
        if self._queue is not None:
            self._queue.clear()
        self._held = None
        self._queued_bytes = 0
        drainer = self._drainer
        if drainer is not None and drainer is not _current_task():
            drainer.cancel()


def _closed(*_: Any) -> None:
    """What a closed outbox calls back: nothing (its owner is gone, or going)."""


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
