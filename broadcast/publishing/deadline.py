"""
How long publishing waits for the database: at most DATABASE_SECONDS a step, then the
publish fails with PublishFailed instead of hanging behind a lock (a ``LOCK TABLE``,
a long migration) for as long as the lock is held.

PostgreSQL is told with a transaction-local ``statement_timeout``; SQLite's own busy
timeout (Django's default ``timeout`` option, 5 s) already bounds a wait for its lock.
Other databases keep their own server-side timeouts (docs/publishing.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.db import connections, router, transaction

from broadcast.models import Broadcast

DATABASE_SECONDS = 5.0


@contextlib.contextmanager
def database_deadline(seconds: float = DATABASE_SECONDS) -> Iterator[None]:
    """
    A transaction (a savepoint inside the caller's) in which each statement on the
    broadcasts' database fails after ``seconds``. Inside the caller's transaction, its
    own timeout is back once this ends: restored on success, rolled back with the
    savepoint on failure.
    """
    alias = router.db_for_write(Broadcast)
    connection = connections[alias]
    nested = connection.in_atomic_block  # the caller's transaction goes on after this one
    with transaction.atomic(using=alias):
        if connection.vendor != "postgresql":
            yield
            return
        with connection.cursor() as cursor:
            timeout = f"{max(1, round(seconds * 1000))}ms"
            if not nested:  # transaction-local, and the transaction is ours: one round trip
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [timeout])
            else:
                cursor.execute(
                    "SELECT current_setting('statement_timeout'), "
                    "set_config('statement_timeout', %s, true)",
                    [timeout],
                )
                previous = cursor.fetchone()[0]
        yield
        if nested:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])
