"""
History for clients that resume: the persisted broadcasts after the last id a
client saw, within BROADCAST_HISTORY_LIMIT and BROADCAST_HISTORY_TTL; and the recent
revocations a starting relay must know of.

A read that fails raises (the database's own error): "could not read" is never
"history is gone", which only ``None`` from :func:`replay_plan` means.

Every id a client can have seen was committed before it was sent (the send lock,
see sendlock.py), so a client that joins the group first and reads history second
misses nothing in between.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import NamedTuple

from django.db.models import Max
from django.utils import timezone

from broadcast.conf import conf
from broadcast.group import REVOKE_TOPIC
from broadcast.models import Broadcast
from broadcast.protocol import Prepared, dumps

# Rows that hold a burnt id: their broadcast never reached the layer under that id.
NOT_DELIVERED = (Broadcast.Status.FAILED, Broadcast.Status.RESENT)
# How far back a starting relay looks for revocations (recent_revocations): well past
# the longest a connect takes from its access check to its registration.
RECENT_REVOCATION_SECONDS = 60.0
RECENT_REVOCATION_IDS = 10_000


def newest_id() -> int:
    """The id of the newest broadcast that was (or is being) sent."""
    sent = Broadcast.objects.exclude(status__in=NOT_DELIVERED)
    return sent.aggregate(last=Max("seq"))["last"] or 0


def newest_sent_before(after_id: int, before: dt.datetime) -> int:
    """The newest id after ``after_id`` of a broadcast sent before ``before``; 0 if none."""
    # seq > after_id: the unique index on seq reads only the rows past the position.
    rows = Broadcast.objects.filter(
        seq__gt=after_id, status=Broadcast.Status.SENT, sent_at__lt=before
    )
    return rows.aggregate(last=Max("seq"))["last"] or 0


class Replayed(NamedTuple):
    """One broadcast read back from history, framed as it was sent."""

    id: int
    text: str
    topic: str | None


def replay_plan(
    last_id: int, current_id: int, topics: Collection[str] | None = None
) -> list[int] | None:
    """
    The ids of every broadcast after ``last_id`` to replay, in order, or None when
    they are not all in history (too many, too old, or an id this hub never issued).
    With ``topics``, only the global stream's and those topics' ids: the others are
    still read, since a hole anywhere in the ids is a loss the client cannot rule out.
    Only ids are read here; :func:`envelope_texts` reads the broadcasts page by page.
    """
    # Ahead of this process's relay, the id may still be ours: another process can
    # welcome a client with an id committed but not yet sent (or whose publisher
    # died there). Only an id the database never issued is another history.
    if last_id > current_id and not Broadcast.objects.filter(seq=last_id).exists():
        return None  # ids from another history (the database was reset)
    # Failed rows are read too: they hold their (burnt) ids, so the ids read must
    # run on from last_id without a hole. A hole means rows were deleted (pruned
    # history, an admin delete), and replaying around it would be a silent loss.
    rows = list(
        Broadcast.objects.filter(seq__gt=last_id)
        .order_by("seq")
        .values_list("seq", "sent_at", "status", "topic")[: conf.BROADCAST_HISTORY_LIMIT + 1]
    )
    if len(rows) > conf.BROADCAST_HISTORY_LIMIT:
        return None
    if any(seq != last_id + 1 + index for index, (seq, *_) in enumerate(rows)):
        return None
    # Every id up to current_id was committed before it was sent: history that stops
    # short of it lost the rest (pruned), as surely as a hole.
    if current_id > last_id and (not rows or (rows[-1][0] or 0) < current_id):
        return None
    cutoff = timezone.now() - dt.timedelta(seconds=conf.BROADCAST_HISTORY_TTL)
    oldest_sent = rows[0][1] if rows else None
    if oldest_sent is not None and oldest_sent < cutoff:
        return None
    return [
        seq
        for seq, _, status, topic in rows
        if seq is not None
        and status not in NOT_DELIVERED
        and (topics is None or not topic or topic in topics)
    ]


def envelope_texts(ids: list[int]) -> list[Replayed]:
    """The broadcasts with these ids that still exist, in order."""
    rows = (
        Broadcast.objects.filter(seq__in=ids)
        .order_by("seq")
        .only("seq", "type", "topic", "payload", "sent_at")
    )
    return [
        Replayed(row.seq, _prepared(row).text(row.seq, row.sent_at), row.topic_or_none)
        for row in rows
        if row.seq is not None and row.sent_at is not None  # both are set with the id
    ]


def _prepared(row: Broadcast) -> Prepared:
    # Not validated again: a row holds what was valid when it was sent, and a limit
    # lowered since must not make its history unreadable.
    return Prepared(row.type, dumps(row.payload), row.topic_or_none)


def window(after_id: int, up_to: int) -> list[tuple[Replayed, float]] | None:
    """
    Every broadcast after ``after_id`` up to ``up_to``, each with when it was sent, in
    one query, for recent history to hold; None when the ids between are not all in
    history (a hole, or older than BROADCAST_HISTORY_TTL). Burnt ids are left out.
    """
    rows = list(
        Broadcast.objects.filter(seq__gt=after_id, seq__lte=up_to)
        .order_by("seq")
        .only("seq", "type", "topic", "payload", "sent_at", "status")
    )
    if [row.seq for row in rows] != list(range(after_id + 1, up_to + 1)):
        return None
    cutoff = timezone.now() - dt.timedelta(seconds=conf.BROADCAST_HISTORY_TTL)
    if rows and rows[0].sent_at is not None and rows[0].sent_at < cutoff:
        return None  # as replay_plan judges it
    return [
        (
            Replayed(row.seq, _prepared(row).text(row.seq, row.sent_at), row.topic_or_none),
            row.sent_at.timestamp(),
        )
        for row in rows
        if row.seq is not None and row.sent_at is not None and row.status not in NOT_DELIVERED
    ]


def replay_after(last_id: int, current_id: int) -> list[Replayed] | None:
    """Every broadcast after ``last_id`` at once (small ranges), or None as in replay_plan."""
    ids = replay_plan(last_id, current_id)
    if ids is None:
        return None
    texts = envelope_texts(ids)
    return texts if len(texts) == len(ids) else None


def recent_revocations(newest: int) -> list[tuple[str, float]]:
    """
    (owner, seconds ago) of the revocations sent in the last RECENT_REVOCATION_SECONDS
    (and at most RECENT_REVOCATION_IDS ids before ``newest``): a relay that starts now
    never received them, and a connect judged before one of them must not register
    after it.
    """
    now = timezone.now()
    rows = Broadcast.objects.filter(
        seq__gt=newest - RECENT_REVOCATION_IDS,
        topic=REVOKE_TOPIC,
        sent_at__gte=now - dt.timedelta(seconds=RECENT_REVOCATION_SECONDS),
    ).values_list("payload", "sent_at")
    return [
        (payload["owner"], max(0.0, (now - sent_at).total_seconds()))
        for payload, sent_at in rows
        if sent_at is not None
        and isinstance(payload, dict)
        and isinstance(payload.get("owner"), str)
    ]
