"""
This process's connection counts in the database: its HubProcess row, written every
heartbeat, and a ConnectionSample for the dashboard's chart every
BROADCAST_SAMPLE_SECONDS.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async
from django.utils import timezone

from .conf import conf
from .models import ConnectionSample, HubProcess

logger = logging.getLogger("broadcast.hub")

# Topics per process row, the most subscribed first: per-user topics alone can number
# as many as the users, and the row is written every heartbeat.
TOPIC_COUNTS_KEPT = 200


def _no_topics() -> dict[str, int]:
    return {}


@dataclass
class Counts:
    """Connection figures of one process, and the row they are written to."""

    current: Callable[[], int]
    topics: Callable[[], dict[str, int]] = _no_topics
    peak: int = 0
    total_accepted: int = 0
    started_at: datetime = field(default_factory=timezone.now)
    row_id: int | None = None
    _sampled_at: float | None = None

    def accepted(self) -> None:
        self.total_accepted += 1
        self.peak = max(self.peak, self.current())

    async def write(self, *, stopped: bool = False) -> None:
        # Read on the event loop: the index changes there, and the write runs in a thread.
        topics = kept_topics({} if stopped else self.topics())
        await database_sync_to_async(self._write)(stopped, topics)

    def _write(self, stopped: bool, topics: dict[str, int]) -> None:
        # Counts are read when the write runs, not when it was queued, so that a
        # write waiting behind another never lands older figures over newer ones.
        now = timezone.now()
        fields: dict[str, Any] = {
            "current": self.current(),
            "peak": self.peak,
            "total_accepted": self.total_accepted,
            "topics": topics,
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


def kept_topics(counts: dict[str, int]) -> dict[str, int]:
    """The TOPIC_COUNTS_KEPT most subscribed topics, most first (then by name)."""
    # nlargest first: sorting every topic each heartbeat would cost as many as there are.
    top = heapq.nlargest(TOPIC_COUNTS_KEPT, counts.items(), key=lambda item: item[1])
    return dict(sorted(top, key=lambda item: (-item[1], item[0])))


def live_topic_totals() -> dict[str, int]:
    """Subscribers per topic over every live process (of the topics each one kept)."""
    totals: dict[str, int] = {}
    for topics in HubProcess.objects.live().values_list("topics", flat=True):
        for topic, count in (topics or {}).items():
            totals[topic] = totals.get(topic, 0) + int(count)
    return kept_topics(totals)


async def heartbeat(counts: Counts, renew: Callable[[], Awaitable[None]]) -> None:
    """Every BROADCAST_HEARTBEAT_SECONDS: write the counts, then ``renew()`` (membership)."""
    while True:
        try:
            await counts.write()
        except Exception as exc:
            logger.warning("Could not write the connection-count row: %s", exc)
        await renew()
        await asyncio.sleep(conf.BROADCAST_HEARTBEAT_SECONDS)
