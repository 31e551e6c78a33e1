"""
Process tuning a project may opt into from its ASGI module (hubsite/asgi.py does).

Garbage collection dominates the cost of accepting WebSocket clients in a Django
process: a Django project leaves about 100,000 long-lived objects behind at import,
and every full collection walks all of them again, many times over while thousands
of clients connect. Measured in-process (10,000 connects through hubsite's ASGI
application): 90 us a connect with the defaults, 55 us with the import-time objects
frozen, 34 us with the young generation also collected every 7,000 allocations
instead of 700 (docs/benchmarks.md has the server-level figures).
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 7000


def tune_gc() -> None:
    """
    Call once, after the application is imported (and, with a pre-forking server,
    in each worker): move everything alive now out of the collector's reach, and
    collect the young generation less often. Objects frozen here are never freed,
    which is what import-time objects are anyway.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
