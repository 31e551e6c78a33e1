"""
Process tuning a project may opt into from its ASGI module (hubsite/asgi.py does).

Garbage collection dominates the cost of accepting WebSocket clients in a Django
process: a Django project leaves about 100,000 long-lived objects behind at import,
and every full collection walks all of them again, many times over while thousands
of clients connect. Freezing them (``gc.freeze()``) takes them out of every later
collection. Measured in-process (10,000 connects through hubsite's ASGI
application): 90 us a connect with the defaults, 49 us frozen. On uvicorn, 10,000
clients connect in 4.1 to 4.3 s frozen, against 4.5 s untuned (the raw ASGI app, with
the same tuning, in 2.9 to 3.1 s).

The collection thresholds are left alone by default: a young generation collected
every 7,000 allocations instead of 700 brought the in-process cost to 32 us and
10,000 connects on uvicorn to 2.8 to 3.1 s, but under churn (16,000 clients coming
and going on daphne in 30 s) the server's RSS then grew 85 to 92 MiB instead of
29 MiB, because garbage from closed connections waited longer for a full collection
(tests/e2e/test_soak.py prints the figure). A project that sees connect storms and
little churn can pass ``young_generation=7000``; hubsite does not.
"""

from __future__ import annotations

import gc


def tune_gc(young_generation: int | None = None) -> None:
    """
    Call once, after the application is imported (and, with a pre-forking server,
    in each worker): move everything alive now out of the collector's reach. Objects
    frozen here are never freed, which is what import-time objects are anyway.

    ``young_generation`` (for example 7000) also collects the youngest generation
    less often: faster connect bursts, more memory under churn (see above).
    """
    gc.collect()
    gc.freeze()
    if young_generation is not None:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_generation, middle, old)
