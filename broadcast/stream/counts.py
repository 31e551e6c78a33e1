"""
This process's connection counts in the database: its HubProcess row, written every
heartbeat, and a ConnectionSample for the dashboard's chart every
SAMPLE_SECONDS.

The writes, and the heartbeat's other question, run on a database thread of the
process's own, one after another, and that thread keeps its connection from one
heartbeat to the next until :meth:`Counts.release`. Through ``database_sync_to_async``
with ``conn_max_age`` at 0 (Django's default, and what it advises under ASGI),
every heartbeat would open a connection and close it, and on SQLite closing the last
one checkpoints the write-ahead log: most of what an idle process costs. Django's advice is
against connections kept by request threads, which come and go; this one thread lives
as long as the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from django.db import connections
from django.utils import timezone

from broadcast.models import ConnectionSample, HubProcess

# Topics per process row, the most subscribed first: per-user topics alone can number
# as many as the users, and the row is written every heartbeat.
TOPIC_COUNTS_KEPT = 200
# How often a process records its connection count for the dashboard chart.
SAMPLE_SECONDS = 60.0

P = ParamSpec("P")
T = TypeVar("T")


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
    _database: ThreadPoolExecutor | None = field(default=None, repr=False)

    def accepted(self) -> None:
        self.total_accepted += 1
        self.peak = max(self.peak, self.current())

    async def write(self, *, stopped: bool = False) -> None:
        await self.on_database_thread(self.write_now, stopped, self.kept_topics(stopped))

    async def on_database_thread(
        self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``work(*args, **kwargs)`` on the database thread, after what it was given before."""
        if self._database is None:
            self._database = ThreadPoolExecutor(1, thread_name_prefix="broadcast-database")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._database, lambda: work(*args, **kwargs))

    async def release(self, wait_seconds: float) -> None:
        """
        Close the database thread's connection once what it was given is done, waiting
        ``wait_seconds`` at most: a database server cannot drop a database, or restart
        cleanly, while a connection to it stays open. The next write opens a new one.
        """
        database, self._database = self._database, None
        if database is None:
            return
        closing = asyncio.wrap_future(database.submit(close_connections))
        database.shutdown(wait=False)
        await asyncio.wait([closing], timeout=wait_seconds)

    def kept_topics(self, stopped: bool = False) -> dict[str, int]:
        """The topic counts to write; read on the event loop, where the index changes."""
        return kept_topics({} if stopped else self.topics())

    def write_now(self, stopped: bool, topics: dict[str, int]) -> None:
        """Write the row (and a sample, when one is due); blocking."""
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
        if stopped or self._sampled_at is None or clock - self._sampled_at >= SAMPLE_SECONDS:
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


def close_connections() -> None:
    """Close this thread's database connections, whatever state they are in."""
    with contextlib.suppress(Exception):
        connections.close_all()
