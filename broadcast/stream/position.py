"""
The stream position of one process, and every step that moves it: a batch delivered
in order (a jump in its ids is a gap), a gap filled from history or held while history
cannot be read, a catch-up, a ``hub.reset``. The relay is this object.

The invariant, checked in one place (``_advance``): the position moves past an id
only when that id was fanned out, when history shows it was never sent (a burnt id),
or when a ``hub.reset`` naming it was sent. A fan-out that raises puts it back.
"Could not read history" is never taken for "history is gone": a gap whose history
cannot be read holds the stream (the live broadcasts wait in the layer) and retries;
past HOLD_SECONDS its clients get ``hub.reset``: told, never silent.

A broadcast the layer lost with nothing after it leaves no gap to notice: the
heartbeat's look (:mod:`broadcast.stream.lost`) finds it, and ``send_lost`` sends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.db import DatabaseError

from broadcast import metrics
from broadcast.group import relay_message
from broadcast.history import Replayed, replay_after
from broadcast.protocol import reset_text
from broadcast.stream.lost import LostLook, look
from broadcast.stream.receiver import Message, Receiver
from broadcast.stream.recent import Recent

if TYPE_CHECKING:
    from broadcast.stream.fanout import Clients

logger = logging.getLogger(__name__)

# How long a gap whose history cannot be read holds the stream, retrying with a
# growing delay, before clients are told with hub.reset: a database failover's span.
HOLD_SECONDS = 10.0
HOLD_FIRST_DELAY, HOLD_MAX_DELAY = 0.1, 2.0


@dataclass(frozen=True)
class CatchUp:
    """What a catch-up from the database sent: the ids, or a reset past history."""

    ids: tuple[int, ...] = ()
    reset: bool = False


class SkippedId(RuntimeError):
    """The position was asked to move past an id that no one accounted for (a bug)."""


class Stream:
    """The position and the steps that move it: the relay's half that owns the ids."""

    receiver: Receiver
    channel: str | None

    def __init__(self, clients: Clients) -> None:
        # The newest id this process's clients were sent, or were told about; only
        # ``_advance`` moves it (and the relay's start, before any client).
        self.position = 0
        # What the position passed, kept for resumes: each move is recorded there.
        self.recent = Recent()
        # Since when a gap waits for history the database cannot give (None: not).
        self.holding_since: float | None = None
        self._clients = clients
        # Messages a sweep took that could not join it (a topic's, or after a gap),
        # with all after them: the next batch starts with them.
        self._carry: list[Message] = []
        self._sweep_floor: int | None = None  # the position a sweep under way began at

    def lost_look(self) -> LostLook | None:
        """The heartbeat's look; None while receiving, or restarting (which catches up)."""
        return None if self.channel is None else look(self.receiver.idle_since, self.position)

    async def send_lost(self, look: LostLook, newest: int | Exception) -> None:
        """
        Send from the database what ``look`` found sent a while ago and never received,
        if the relay is still idle at the same position once history is read: this
        runs in the heartbeat's task, and must not pass a batch the relay took meanwhile.
        """
        try:
            if isinstance(newest, Exception):
                raise newest
            if newest <= self.position or not self._still(look):
                return  # nothing lost; or the relay woke meanwhile: the next heartbeat looks
            missed = await database_sync_to_async(replay_after)(look.after_id, newest)
        except Exception as exc:
            logger.warning("Relay could not look for broadcasts the layer lost (%s)", exc)
            return
        if not self._still(look):
            return
        caught_up = self._send_missed(missed, newest)
        if caught_up.ids:
            logger.warning(
                "Relay missed persisted broadcast(s) %s in the channel layer, with none "
                "after them; sent them from the database",
                ", ".join(str(missed_id) for missed_id in caught_up.ids),
            )

    def _still(self, look: LostLook) -> bool:
        """Whether the relay is idle, at the position, where ``look`` found it."""
        return self.receiver.idle_since == look.idle_since and self.position == look.after_id

    @property
    def settled(self) -> int:
        """
        The newest id every client was written up to: the position, or during a sweep
        the position before it (a pong must not name ids a later chunk has yet to get).
        """
        return self.position if self._sweep_floor is None else self._sweep_floor

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
            message = self.receiver.poll()
            if message is None:
                break
            msg_id = message.get("id")
            if message.get("topic") is not None or (
                isinstance(msg_id, int) and msg_id > self.position + 1
            ):
                self._carry.append(message)
                break
            if isinstance(msg_id, int) and not self._advance(msg_id, message):
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
                if not self._advance(msg_id, message):
                    continue  # already sent (the gap's history held it too)
            ready.append(message)
        if ready and sweep_limit:
            self._sweep_floor = since
            try:
                await self._clients.sweep(ready, self._take_more, sweep_limit)
            except Exception:
                self.position = since  # as in _hand_over
                self.recent.put_back(since)
                raise
            finally:
                self._sweep_floor = None
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
            self.recent.put_back(since)
            raise

    def _advance(
        self, msg_id: int, sent: Message | None = None, *, accounted: bool = False
    ) -> bool:
        """
        Move the position to ``msg_id``, the one place it moves; False for an id at or
        behind it (already sent). Past more than the next id only when the ids between
        are ``accounted`` for: replayed, burnt (history says never sent), or reset.
        Recent history records the move: the broadcast ``sent``, or ids with none.
        """
        if msg_id <= self.position:
            return False
        if msg_id != self.position + 1 and not accounted:
            raise SkippedId(f"the position {self.position} cannot skip to {msg_id}")
        self.position = msg_id
        self.recent.moved(msg_id, sent)
        return True

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
                    missed = await database_sync_to_async(replay_after)(self.position, msg_id - 1)
                    break
                except DatabaseError as exc:  # the database; a bug goes up
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
        caught_up = self._send_missed(missed, msg_id - 1)
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

    async def _catch_up(self, newest: int) -> CatchUp:
        """
        Fan out every persisted broadcast after the position, up to at least
        ``newest``; or, when they are no longer all in history, ``hub.reset``. A
        database failure raises, and the position stays where it was.
        """
        missed = await database_sync_to_async(replay_after)(self.position, newest)
        return self._send_missed(missed, newest)

    def _send_missed(self, missed: list[Replayed] | None, newest: int) -> CatchUp:
        """Fan out what history gave, up to ``newest``; None from history: ``hub.reset``."""
        if missed is None:
            logger.warning("Relay missed broadcasts beyond history: hub.reset")
            self._reset(newest)
            return CatchUp(reset=True)
        for replayed in missed:
            if replayed.id <= self.position:
                continue  # already sent
            # Fanned out, then the position moves (burnt ids before it were never sent).
            message = relay_message(replayed.text, replayed.id, replayed.topic)
            self._clients.fan_out(message)
            self._advance(replayed.id, message, accounted=True)
        self._advance(newest, accounted=True)  # history runs to it: the rest were burnt
        return CatchUp(ids=tuple(replayed.id for replayed in missed))

    def _reset(self, newest: int) -> None:
        """Tell clients that the ids after the position up to ``newest`` are lost to them."""
        if newest <= self.position:
            return
        self._clients.fan_out(relay_message(reset_text(newest, self.position), None))
        metrics.resets.inc()
        self._advance(newest, accounted=True)
        self.recent.skipped(newest)
        # A revocation among the skipped ids is unknown: every authenticated connection
        # comes back (1013) and is judged again, so that none outlives one.
        self._clients.recheck_owners()
