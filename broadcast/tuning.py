"""
Process tuning a project may opt into from its ASGI module (hubsite/asgi.py does).

Garbage collection dominates the cost of accepting WebSocket clients, in the hub and
in a raw ASGI app alike. Measured on uvicorn over 10,000 connects (gc.callbacks
timing in the server, 2026-11-26): the raw app spent 1.55 s of its 3.4 s in 9 full
collections, the hub 2.09 s of 4.1 s in 11. Every connection leaves 70 to 80
long-lived objects the collector tracks (most of them the server's own), and each
full collection walks all of them again while clients pile up: about 190 ms each by
10,000 clients. Two things take that away:

- ``gc.freeze()`` after import: Django leaves about 100,000 long-lived objects behind,
  never garbage, that every full collection would walk too.
- Paced full collections: a connect burst creates no garbage worth a full
  collection, closed connections do (the servers' own reference cycles: 29 objects
  per closed connection on uvicorn, 65 on daphne; the hub's own leave none). So
  Python's automatic full collections are made ten times rarer, and the hub asks
  for one itself as connections close: every 1,000 closes, or a quarter of the open
  connections if that is more (a full collection's cost grows with them, as in
  Python's own rule for the oldest generation). 10,000 connects on uvicorn: 2.5 s
  instead of 4.1 s, with 3 to 6 full collections instead of 11; under churn (16,000
  clients in 30 s) RSS grows no more than with Python's own schedule.

Collecting the young generation less often (``young_generation=7000``) also speeds up
connect bursts, at a memory cost under churn (docs/design-notes.md); it stays opt-in.
"""

from __future__ import annotations

import asyncio
import gc

# Automatic collections of the oldest generation come after this many collections
# of the middle one (Python's default: 10).
OLD_GENERATION_THRESHOLD = 100
CLOSES_PER_COLLECTION = 1000

_pacer: GarbagePacer | None = None


class GarbagePacer:
    """Asks for a full collection once enough connections have closed."""

    def __init__(self, closes_per_collection: int = CLOSES_PER_COLLECTION) -> None:
        self.closes_per_collection = closes_per_collection
        self.closes = 0
        self.collections = 0

    def connection_closed(self, still_open: int) -> None:
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

    ``pace_full_collections`` makes Python's automatic full collections rarer and
    lets :func:`connection_closed` (the hub calls it) ask for them instead.
    ``young_generation`` (for example 7000) also collects the youngest generation
    less often: faster connect bursts, more memory under churn.
    """
    global _pacer
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if young_generation is not None:
        young = young_generation
    if pace_full_collections:
        old = OLD_GENERATION_THRESHOLD
        _pacer = GarbagePacer(closes_per_collection)
    gc.set_threshold(young, middle, old)


def connection_closed(still_open: int) -> None:
    """A client connection closed; a no-op unless :func:`tune_gc` paces collections."""
    if _pacer is not None:
        _pacer.connection_closed(still_open)


def pacer() -> GarbagePacer | None:
    return _pacer
