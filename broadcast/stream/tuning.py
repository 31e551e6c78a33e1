"""
Garbage-collector tuning a project may opt into from its ASGI module (``tune_gc()``
after the application is built): the collector, not the hub, dominates the cost of
accepting WebSocket clients.

Every connection leaves long-lived objects the collector tracks (most of them the
server's own), and each full collection walks all of them again while clients pile
up. Two things take that away:

- ``gc.freeze()`` after import: Django leaves about 100,000 long-lived objects behind,
  never garbage, that every full collection would walk too.
- Full collections paced by closed connections during a connect burst. A burst
  creates no garbage worth a full collection; closed connections do (the servers' own
  reference cycles; the hub's own leave none). While connections open faster than
  BURST_OPENS a second, Python's automatic full collections are ten times rarer and
  the hub asks for one itself as connections close: every 1,000 closes, or a quarter
  of the open connections if that is more (a full collection's cost grows with them,
  as in Python's own rule for the oldest generation). A quiet second ends the burst
  and Python's own schedule resumes, so garbage from anything else (HTTP requests
  served by the same process) is not kept longer.

Collecting the young generation less often (``young_generation=7000``) also speeds up
connect bursts, at a memory cost under churn; it stays opt-in. The measurements behind
all three are in docs/design-notes.md and docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import gc
import time

# During a burst, automatic collections of the oldest generation come after this
# many collections of the middle one (Python's default: 10).
BURST_OLD_GENERATION_THRESHOLD = 100
# Connections opened within a second that make a burst (and keep it going).
BURST_OPENS = 200
CLOSES_PER_COLLECTION = 1000

_pacer: GarbagePacer | None = None


class GarbagePacer:
    """
    Watches connections open and close. During a connect burst it makes Python's
    automatic full collections rarer and asks for one itself once enough
    connections have closed; outside bursts it leaves Python's schedule alone.
    """

    def __init__(
        self,
        closes_per_collection: int = CLOSES_PER_COLLECTION,
        burst_opens: int = BURST_OPENS,
        burst_window: float = 1.0,
    ) -> None:
        self.closes_per_collection = closes_per_collection
        self.burst_opens = burst_opens
        self.burst_window = burst_window
        self.bursting = False
        self.closes = 0
        self.collections = 0
        self._opens = 0
        self._window_started = 0.0
        self._usual_old_threshold = gc.get_threshold()[2]
        self._check: asyncio.TimerHandle | None = None

    def connection_opened(self) -> None:
        self._opens += 1
        now = time.monotonic()
        if self.bursting:
            if now - self._window_started > 2 * self.burst_window:
                self._end_burst()  # its loop stopped before the check could run
            return
        if now - self._window_started >= self.burst_window:
            self._window_started, self._opens = now, 1
        if self._opens >= self.burst_opens:
            self._start_burst()

    def connection_closed(self, still_open: int) -> None:
        if not self.bursting:
            return  # Python's own schedule collects what closed connections leave
        self.closes += 1
        if self.closes < max(self.closes_per_collection, still_open // 4):
            return
        self.closes = 0
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.collect()
        else:
            # After the closing connection's handler has let go of its objects.
            loop.call_soon(self.collect)

    def collect(self) -> None:
        self.collections += 1
        gc.collect()

    def _start_burst(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to end the burst on: keep Python's schedule
        self.bursting = True
        young, middle, self._usual_old_threshold = gc.get_threshold()
        gc.set_threshold(young, middle, BURST_OLD_GENERATION_THRESHOLD)
        self._next_window()
        self._check = loop.call_later(self.burst_window, self._check_burst)

    def _check_burst(self) -> None:
        if self._opens < self.burst_opens:
            self._end_burst()
            return
        self._next_window()
        self._check = asyncio.get_running_loop().call_later(self.burst_window, self._check_burst)

    def _next_window(self) -> None:
        self._window_started, self._opens = time.monotonic(), 0

    def _end_burst(self) -> None:
        if self._check is not None:
            self._check.cancel()  # when ended from connection_opened: one check chain only
            self._check = None
        self.bursting = False
        self.closes = self._opens = 0
        self._window_started = 0.0
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, self._usual_old_threshold)


def tune_gc(
    young_generation: int | None = None,
    *,
    pace_full_collections: bool = True,
    closes_per_collection: int = CLOSES_PER_COLLECTION,
) -> None:
    """
    Call once, after the application is imported (and, with a pre-forking server,
    in each worker): move everything alive now out of the collector's reach. Objects
    frozen here are never freed, which is what import-time objects are anyway.

    ``pace_full_collections`` lets :func:`connection_opened` and
    :func:`connection_closed` (the hub calls them) pace full collections during
    connect bursts. ``young_generation`` (for example 7000) also collects the
    youngest generation less often: faster connect bursts, more memory under churn.
    """
    global _pacer
    gc.collect()
    gc.freeze()
    if young_generation is not None:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_generation, middle, old)
    _pacer = GarbagePacer(closes_per_collection) if pace_full_collections else None


def current_pacer() -> GarbagePacer | None:
    """The pacer the hub reports connections to, if :func:`tune_gc` installed one."""
    return _pacer


def use_pacer(pacer: GarbagePacer | None) -> None:
    """Report connections to ``pacer`` (one built with other thresholds), or to none."""
    global _pacer
    _pacer = pacer


def connection_opened() -> None:
    """A client connection opened; a no-op unless :func:`tune_gc` paces collections."""
    if _pacer is not None:
        _pacer.connection_opened()


def connection_closed(still_open: int) -> None:
    """A client connection closed; a no-op unless :func:`tune_gc` paces collections."""
    if _pacer is not None:
        _pacer.connection_closed(still_open)
