"""
Resume: what one client missed, written from history ahead of the live stream.

The client's outbox holds live broadcasts while this runs. History is read a page at
a time and written at the pace the client reads it (never counted against the
slow-client bound: a long absence is not a slow client), then ``hub.resumed``, then
what was held, skipping any id that history already gave.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from channels.db import database_sync_to_async
from django.utils import timezone

from .envelope import control_text
from .history import envelope_texts, replay_plan
from .outbox import Outbox, Outgoing

logger = logging.getLogger(__name__)

# Broadcasts read from the database at a time (each at most BROADCAST_MAX_MESSAGE_BYTES).
PAGE = 50


async def resume(
    outbox: Outbox,
    last_id: int,
    current_id: int,
    stall_seconds: float,
    topics: Collection[str] = frozenset(),
) -> None:
    """
    :func:`_resume`, guarded: a failure cuts the client (which then resumes again)
    instead of leaving its outbox holding the live stream for ever.
    """
    try:
        await _resume(outbox, last_id, current_id, stall_seconds, topics)
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
) -> None:
    """
    Replay to ``outbox`` every broadcast of the global stream and of ``topics`` after
    ``last_id`` up to at least ``current_id`` (the newest id the process had relayed
    when the outbox began holding), or ``hub.reset`` when they are no longer all in
    history. A client that reads nothing for ``stall_seconds`` is cut as a slow client.
    """
    try:
        ids = await database_sync_to_async(replay_plan)(last_id, current_id, topics)
    except Exception as exc:
        logger.warning("Could not read history for a resuming client: %s", exc)
        ids = None
    if ids is None:
        await _reset(outbox, last_id, current_id, stall_seconds)
        return
    newest = last_id
    for start in range(0, len(ids), PAGE):
        page = ids[start : start + PAGE]
        try:
            texts = await database_sync_to_async(envelope_texts)(page)
        except Exception as exc:
            logger.warning("Could not read history for a resuming client: %s", exc)
            texts = []
        if [replayed.id for replayed in texts] != page:  # pruned or deleted meanwhile
            await _reset(outbox, newest, current_id, stall_seconds)
            return
        for replayed in texts:
            message = Outgoing.of_text(replayed.text, replayed.id)
            if not await _write(outbox, message, stall_seconds):
                return
            newest = replayed.id
    # The position reached: history ran to at least current_id, and other topics'
    # ids up to it are absent, not missed (what is held comes after it).
    position = max(newest, current_id)
    resumed = control_text(
        "hub.resumed", {"from": last_id, "count": len(ids), "last_id": position}, timezone.now()
    )
    if await _write(outbox, Outgoing.of_text(resumed), stall_seconds):
        await _release(outbox, newest, stall_seconds)


async def _reset(outbox: Outbox, last_id: int, current_id: int, stall_seconds: float) -> None:
    text = control_text("hub.reset", {"last_id": current_id, "from": last_id}, timezone.now())
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
