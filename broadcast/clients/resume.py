"""
Resume: what one client missed, written from history ahead of the live stream.

The client's outbox holds live broadcasts while this runs. Recent history in memory
(:mod:`broadcast.stream.recent`) answers for what this process's relay saw; the
database, read a page at a time, for the rest. History is written at the pace the
client reads it (never counted against the slow-client bound: a long absence is not a
slow client), then ``hub.resumed``, then what was held, skipping any id that history
already gave. When the database cannot be read, the client is told to try again later
(:class:`HistoryUnavailable`), never ``hub.reset``: its history may well still exist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from django.db import DatabaseError

from broadcast import metrics
from broadcast.clients.outbox import Outbox
from broadcast.conf import conf
from broadcast.history import Replayed, envelope_texts, replay_plan
from broadcast.protocol import reset_text, resumed_text
from broadcast.stream.outgoing import Outgoing
from broadcast.stream.recent import Recent

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Broadcasts read from the database at a time (each at most BROADCAST_MAX_MESSAGE_BYTES).
PAGE = 50
# How long a resume past this process's position waits for its relay to get there.
AHEAD_WAIT_SECONDS = 1.0


class HistoryUnavailable(Exception):
    """History could not be read (the database is away): the client should come back."""


async def resume(
    outbox: Outbox,
    last_id: int,
    current_id: int,
    stall_seconds: float,
    topics: Collection[str] = frozenset(),
    recent: Recent | None = None,
) -> None:
    """
    :func:`_resume`, guarded: a failure cuts the client (which then resumes again)
    instead of leaving its outbox holding the live stream for ever. Raises
    :class:`HistoryUnavailable` for the caller to close the client with "try again
    later".
    """
    try:
        await _resume(outbox, last_id, current_id, stall_seconds, topics, recent)
    except HistoryUnavailable:
        raise
    except Exception:
        logger.exception("Resume failed; cutting the client so that it resumes again")
        if not outbox.closed:
            outbox.cut()


async def _resume(
    outbox: Outbox,
    last_id: int,
    current_id: int,
    stall_seconds: float,
    topics: Collection[str],
    recent: Recent | None,
) -> None:
    """
    Replay to ``outbox`` every broadcast of the global stream and of ``topics`` after
    ``last_id`` up to ``current_id`` (the newest id the process had relayed when the
    outbox began holding; the relay brings the rest), or ``hub.reset`` when they are no
    longer all in history. Recent history answers when it can; the database otherwise.
    A client that reads nothing for ``stall_seconds`` is cut as a slow client.
    """
    if recent is not None and last_id > current_id and await _reached(recent, last_id):
        # A client from a process whose relay was a step ahead, and this one has now
        # passed its id: all it lacks came after registering, held (skipped up to its id).
        metrics.resumes.labels("memory").inc()
        newest, count = last_id, 0
    elif (replayed := await _recent(recent, last_id, current_id, topics)) is not None:
        metrics.resumes.labels("memory").inc()
        newest, count = last_id, len(replayed)
        for one in replayed:
            if not await _write(outbox, Outgoing.of_text(one.text, one.id), stall_seconds):
                return
            newest = one.id
    else:
        done = await _from_database(outbox, last_id, current_id, stall_seconds, topics)
        if done is None:
            return
        newest, count = done
    # The position reached: history ran to at least current_id, and other topics'
    # ids up to it are absent, not missed (what is held comes after it).
    resumed = resumed_text(last_id, count, max(newest, current_id))
    if await _write(outbox, Outgoing.of_text(resumed), stall_seconds):
        await _release(outbox, newest, stall_seconds)


async def _reached(recent: Recent, last_id: int) -> bool:
    """Whether the relay passes ``last_id`` soon; if not, its history is the database's."""
    return await recent.reached(last_id, AHEAD_WAIT_SECONDS)


async def _recent(
    recent: Recent | None, last_id: int, current_id: int, topics: Collection[str]
) -> list[Replayed] | None:
    """What recent history replays, reaching back for it first; None: ask the database."""
    if recent is None or not 0 <= current_id - last_id <= conf.BROADCAST_HISTORY_LIMIT:
        return None  # ahead of the relay, or the database's limit (and hub.reset)
    if last_id < recent.floor and not await recent.reach_back(last_id):
        return None
    return recent.replay(last_id, current_id, topics)


async def _from_database(
    outbox: Outbox,
    last_id: int,
    current_id: int,
    stall_seconds: float,
    topics: Collection[str],
) -> tuple[int, int] | None:
    """
    The replay read from the database, a page at a time: (the newest id written, how
    many), or None once it ended otherwise (``hub.reset`` sent, or the client cut).
    """
    ids = await _read(replay_plan, last_id, current_id, topics)
    metrics.resumes.labels("database").inc()
    if ids is None:
        await _reset(outbox, last_id, current_id, stall_seconds)
        return None
    # What is past current_id comes through the relay, held meanwhile: read ahead of it,
    # history would pass a revocation the relay has yet to apply to this connection.
    ids = [msg_id for msg_id in ids if msg_id <= current_id]
    newest = last_id
    for start in range(0, len(ids), PAGE):
        page = ids[start : start + PAGE]
        texts = await _read(envelope_texts, page)
        if [replayed.id for replayed in texts] != page:  # pruned or deleted meanwhile
            await _reset(outbox, newest, current_id, stall_seconds)
            return None
        for replayed in texts:
            message = Outgoing.of_text(replayed.text, replayed.id)
            if not await _write(outbox, message, stall_seconds):
                return None
            newest = replayed.id
    return newest, len(ids)


async def _read(read: Callable[..., T], *args: Any) -> T:
    """``read(*args)`` on a database thread; a failure is :class:`HistoryUnavailable`."""
    try:
        result: T = await database_sync_to_async(read)(*args)
    except DatabaseError as exc:  # anything else is a bug, which resume() reports
        raise HistoryUnavailable(f"could not read history ({exc})") from exc
    return result


async def _reset(outbox: Outbox, last_id: int, current_id: int, stall_seconds: float) -> None:
    text = reset_text(current_id, last_id)
    if await _write(outbox, Outgoing.of_text(text), stall_seconds):
        await _release(outbox, None, stall_seconds)


async def _write(outbox: Outbox, message: Outgoing, stall_seconds: float) -> bool:
    """Write ahead of the held stream; a client that stopped reading is cut."""
    deadline = asyncio.get_running_loop().time() + stall_seconds
    return _or_cut(outbox, await outbox.write_paced(message, deadline), stall_seconds)


async def _release(outbox: Outbox, after_id: int | None, stall_seconds: float) -> None:
    """Hand over to the live stream once the held broadcasts fit in the client's bound."""
    deadline = asyncio.get_running_loop().time() + stall_seconds
    _or_cut(outbox, await outbox.release_paced(after_id, deadline), stall_seconds)


def _or_cut(outbox: Outbox, done: bool, stall_seconds: float) -> bool:
    if not done and not outbox.closed:
        logger.warning("A resuming client read nothing for %ss", stall_seconds)
        outbox.cut()
    return done
