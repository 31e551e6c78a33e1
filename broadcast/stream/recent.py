"""
Recent history: the persisted broadcasts this process's relay fanned out lately, kept
in memory so that a client resuming within them is served without the database.

The relay records every move of its position here (:mod:`broadcast.stream.position`):
a broadcast fanned out, ids history showed were never sent (burnt), a ``hub.reset``.
So the ids after ``floor`` up to ``newest`` are *complete*: each is held, or was never
sent. A reset breaks that (the ids it skipped were never held): recent history starts
again after it. Bounded by RECENT_BROADCASTS and RECENT_CHARACTERS, oldest out first.

It answers a resume only when it holds everything the database would give; anything
else (more than BROADCAST_HISTORY_LIMIT, past BROADCAST_HISTORY_TTL, ahead of the
relay) is the database's to answer, ``hub.reset`` included. A resume from before its
floor first has it reach back (:meth:`Recent.reach_back`): one database read, which
every resume waiting at the same time shares, so a storm of them costs a few queries.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

from channels.db import database_sync_to_async
from django.db import DatabaseError

from broadcast.conf import conf
from broadcast.history import Replayed, window

# What one process keeps: a restart's worth of broadcasts at any sane rate, within the
# memory of a few hundred slow clients' outboxes.
RECENT_BROADCASTS = 10_000
# Counted in characters of envelope text (len(str)): non-ASCII text takes more memory.
RECENT_CHARACTERS = 64 * 1024 * 1024


class _Kept(NamedTuple):
    replayed: Replayed
    size: int
    at: float  # when the relay fanned it out (wall clock, as history's sent_at)


class Recent:
    """The broadcasts after ``floor`` up to ``newest``, as the relay fanned them out."""

    def __init__(self, broadcasts: int = RECENT_BROADCASTS, size: int = RECENT_CHARACTERS) -> None:
        self.floor = 0
        self.newest = 0
        self._max_broadcasts = broadcasts
        self._max_bytes = size
        self._kept: deque[_Kept] = deque()
        self._bytes = 0
        self._reaching: asyncio.Task[bool] | None = None  # the read every resume shares
        self._waiters: dict[asyncio.Future[None], int] = {}  # see :meth:`reached`

    # What the relay records --------------------------------------------------

    def moved(self, msg_id: int, message: Mapping[str, Any] | None) -> None:
        """The relay's position moved to ``msg_id``, fanning out ``message`` (if any)."""
        text = message.get("text") if message is not None else None
        if isinstance(text, str):
            self.sent(msg_id, text, message.get("topic") if message is not None else None)
        else:  # burnt, or a message no client was given
            self.burnt(msg_id)
        if self._waiters:
            self._wake()

    async def reached(self, msg_id: int, seconds: float) -> bool:
        """Whether the relay's position reaches ``msg_id`` within ``seconds``."""
        if self.newest >= msg_id:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[waiter] = msg_id
        try:
            await asyncio.wait_for(waiter, seconds)
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(waiter, None)
        return True

    def _wake(self) -> None:
        for waiter, msg_id in self._waiters.items():
            if msg_id <= self.newest and not waiter.done():
                waiter.set_result(None)

    def sent(self, msg_id: int, text: str, topic: str | None) -> None:
        """Broadcast ``msg_id`` was fanned out (the ids before it are accounted for)."""
        if msg_id <= self.newest:
            return
        size = len(text)
        self._kept.append(_Kept(Replayed(msg_id, text, topic), size, time.time()))
        self._bytes += size
        self.newest = msg_id
        while len(self._kept) > self._max_broadcasts or self._bytes > self._max_bytes:
            self._forget_oldest()

    def burnt(self, msg_id: int) -> None:
        """The ids up to ``msg_id`` were never sent: complete, with nothing to hold."""
        self.newest = max(self.newest, msg_id)

    def skipped(self, msg_id: int) -> None:
        """The ids up to ``msg_id`` were reset or are unknown: start again after them."""
        self._kept.clear()
        self._bytes = 0
        self.floor = self.newest = max(self.newest, msg_id)

    def put_back(self, position: int) -> None:
        """The relay's position went back to ``position``: what is past it goes too."""
        while self._kept and self._kept[-1].replayed.id > position:
            self._bytes -= self._kept.pop().size
        self.floor = min(self.floor, position)
        self.newest = min(self.newest, position)

    def prepend(self, older: list[tuple[Replayed, float]], after_id: int, up_to: int) -> bool:
        """
        Hold ``older``, history read for the ids after ``after_id`` up to ``up_to``,
        before the rest: only if ``up_to`` is still the floor and it fits the bounds.
        """
        size = sum(len(replayed.text) for replayed, _ in older)
        if (
            up_to != self.floor
            or after_id >= up_to
            or (
                len(self._kept) + len(older) > self._max_broadcasts
                or self._bytes + size > self._max_bytes
            )
        ):
            return False
        self._kept.extendleft(
            _Kept(replayed, len(replayed.text), at) for replayed, at in reversed(older)
        )
        self._bytes += size
        self.floor = after_id
        return True

    async def reach_back(self, last_id: int) -> bool:
        """
        Whether recent history reaches back to ``last_id`` now, after reading what it
        lacked from the database (never more than BROADCAST_HISTORY_LIMIT ids). Resumes
        that need it at once share one read; a read that fails is False, and each
        resume then asks the database itself (and is told 1013 if it cannot).
        """
        while last_id < self.floor:
            reaching = self._reaching
            if reaching is None or reaching.done():
                lacking = self.floor - last_id
                if lacking > conf.BROADCAST_HISTORY_LIMIT or (
                    len(self._kept) + lacking > self._max_broadcasts  # could not hold them
                ):
                    return False
                reaching = asyncio.ensure_future(self._read_back(last_id, self.floor))
                self._reaching = reaching
            # Shielded: a resume cancelled (its client gone) must not end the others' read.
            if not await asyncio.shield(reaching):
                return False
        return True

    async def _read_back(self, after_id: int, up_to: int) -> bool:
        try:
            older = await database_sync_to_async(window)(after_id, up_to)
        except DatabaseError:
            return False
        return older is not None and self.prepend(older, after_id, up_to)

    def _forget_oldest(self) -> None:
        oldest = self._kept.popleft()
        self._bytes -= oldest.size
        self.floor = oldest.replayed.id

    # What a resume reads -----------------------------------------------------

    def replay(
        self, last_id: int, current_id: int, topics: Collection[str] = frozenset()
    ) -> list[Replayed] | None:
        """
        The global stream's and ``topics``' broadcasts after ``last_id`` up to
        ``current_id``, in order; None when recent history cannot answer for all of
        them (the database then does).
        """
        if not self.floor <= last_id <= current_id <= self.newest:
            return None
        if current_id - last_id > conf.BROADCAST_HISTORY_LIMIT:
            return None  # the database's limit, and its hub.reset
        found: list[Replayed] = []
        oldest_at = None
        for kept in reversed(self._kept):  # a resume wants the newest few: read from the end
            msg_id = kept.replayed.id
            if msg_id <= last_id:
                break
            oldest_at = kept.at
            if msg_id <= current_id and (not kept.replayed.topic or kept.replayed.topic in topics):
                found.append(kept.replayed)
        if oldest_at is not None and oldest_at < time.time() - conf.BROADCAST_HISTORY_TTL:
            return None
        found.reverse()
        return found
