"""
The hub's heartbeat, every BROADCAST_HEARTBEAT_SECONDS: the relay renews its group
membership, then one trip to the database writes this process's counts and asks for
the persisted broadcasts an idle relay never got (relay: ``lost_look``). The trip runs
on the counts' database thread, which keeps its connection from one beat to the next
(counts.py), and drops it after a failure, so that the next beat opens a new one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TypeAlias

from broadcast.conf import conf
from broadcast.stream.counts import Counts, close_connections
from broadcast.stream.lost import LostLook
from broadcast.stream.relay import Relay

logger = logging.getLogger(__name__)

Answer: TypeAlias = int | Exception | None


async def heartbeat(counts: Counts, relay: Relay) -> None:
    """Beat until cancelled; a failure is logged and the next beat tries again."""
    while True:
        try:
            await relay.renew()
            look = relay.lost_look()
            written, newest = await counts.on_database_thread(
                _beat, counts, counts.kept_topics(), look
            )
            if written is not None:
                logger.warning("Could not write the connection-count row: %s", written)
            if look is not None and newest is not None:
                await relay.send_lost(look, newest)
        except Exception:
            logger.exception(
                "Heartbeat failed; beating again in %ss", conf.BROADCAST_HEARTBEAT_SECONDS
            )
        await asyncio.sleep(conf.BROADCAST_HEARTBEAT_SECONDS)


def _beat(
    counts: Counts, topics: dict[str, int], look: LostLook | None
) -> tuple[Exception | None, Answer]:
    """On the database thread: the row's write, then the look; each one's failure kept."""
    written: Exception | None = None
    newest: Answer = None
    try:
        counts.write_now(False, topics)
    except Exception as exc:
        written = exc
    if look is not None:
        try:
            newest = look.newest()
        except Exception as exc:
            newest = exc
    if written is not None or isinstance(newest, Exception):
        close_connections()  # perhaps one the server dropped: the next beat opens anew
    return written, newest
