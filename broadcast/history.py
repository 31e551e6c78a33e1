"""
History for clients that resume: the persisted broadcasts after the last id a
client saw, within BROADCAST_HISTORY_LIMIT and BROADCAST_HISTORY_TTL.

Every id a client can have seen was committed before it was sent (the send lock,
see sendlock.py), so a client that joins the group first and reads history second
misses nothing in between.
"""

from __future__ import annotations

import datetime as dt

from django.db.models import Max
from django.utils import timezone

from .conf import conf
from .envelope import prepare
from .models import Broadcast


def newest_id() -> int:
    """The id of the newest broadcast that was (or is being) sent."""
    sent = Broadcast.objects.exclude(status=Broadcast.Status.FAILED)
    return sent.aggregate(last=Max("seq"))["last"] or 0


def replay_after(last_id: int, current_id: int) -> list[tuple[int, str]] | None:
    """
    (id, envelope text) of every broadcast after ``last_id``, in order, or None when
    they are not all in history (too many, too old, or an id this hub never issued).
    """
    if last_id > current_id:
        return None  # ids from another history (the database was reset)
    # Failed rows are read too: they hold their (burnt) ids, so the ids read must
    # run on from last_id without a hole. A hole means rows were deleted (pruned
    # history, an admin delete), and replaying around it would be a silent loss.
    rows = list(
        Broadcast.objects.filter(seq__gt=last_id)
        .order_by("seq")
        .only("seq", "type", "payload", "sent_at", "status")[: conf.BROADCAST_HISTORY_LIMIT + 1]
    )
    if len(rows) > conf.BROADCAST_HISTORY_LIMIT:
        return None
    if any(row.seq != last_id + 1 + index for index, row in enumerate(rows)):
        return None
    if not rows and current_id > last_id:
        return None
    cutoff = timezone.now() - dt.timedelta(seconds=conf.BROADCAST_HISTORY_TTL)
    if rows and rows[0].sent_at < cutoff:
        return None
    return [
        (row.seq, prepare(row.type, row.payload, allow_reserved=True).text(row.seq, row.sent_at))
        for row in rows
        if row.status != Broadcast.Status.FAILED
    ]
