"""
Sending a stored broadcast: its delivery id assigned under the send lock, its
message handed to the channel layer, and its row marked sent, or failed with the
error (resendable).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.db import DatabaseError
from django.db.models import Max
from django.utils import timezone

from broadcast import metrics
from broadcast.conf import conf
from broadcast.group import REVOKE_TOPIC, relay_message
from broadcast.models import Broadcast
from broadcast.protocol import BroadcastError, Prepared, prepare
from broadcast.publishing import backpressure
from broadcast.publishing.deadline import DATABASE_SECONDS, database_deadline
from broadcast.publishing.sendlock import redis_client, send_lock
from broadcast.stream.layer import load_layer

logger = logging.getLogger(__name__)


class PublishFailed(BroadcastError):
    """
    The broadcast was valid but could not be published: the database could not
    store it in time (deadline.py), or the channel layer could not be reached.
    """


def _group_send(
    layer: Any, prepared: Prepared, msg_id: int | None, moment: Any, timeout: float
) -> None:
    message = relay_message(prepared.text(msg_id, moment), msg_id, prepared.topic)
    async_to_sync(_bounded_group_send)(layer, message, timeout)


async def _bounded_group_send(layer: Any, message: dict[str, Any], seconds: float) -> None:
    # Cancelled at the deadline, redis-py drops the connection, and a command Redis
    # had not run yet (a CLIENT PAUSE) is never run: failed means not delivered.
    await asyncio.wait_for(layer.group_send(conf.BROADCAST_GROUP, message), seconds)


def wait_for_relays(layer: Any, budget: float | None = None) -> None:
    """Backpressure (broadcast/publishing/backpressure.py), where the layer allows it."""
    if conf.BROADCAST_MAX_RELAY_BACKLOG is None or not backpressure.applies_to(layer):
        return
    waited = backpressure.wait_for_relays(redis_client(layer), layer, budget)
    if waited >= 0.001:
        metrics.backpressure_seconds.inc(waited)


def send_row(
    row: Broadcast, prepared: Prepared | None = None, *, layer: Any = None
) -> dict[str, Any]:
    """
    Send a persisted broadcast: assign its delivery id and hand it to the layer.

    The id is committed before the send, and both happen under the send lock, so a
    client that sees id N can always find every id below N in the database.
    """
    layer = layer or load_layer()
    if prepared is None:
        try:
            revocation = row.topic == REVOKE_TOPIC  # its reserved topic is allowed
            prepared = prepare(
                row.type, row.payload, topic=row.topic_or_none, allow_reserved=revocation
            )
        except BroadcastError as exc:
            _mark_failed(row, exc)
            raise
    try:
        with send_lock(layer) as held:
            # Pacing gets half of the lock's time at most; the send needs the rest.
            wait_for_relays(layer, held.remaining() / 2)
            now = timezone.now()
            with database_deadline(min(DATABASE_SECONDS, held.remaining())):
                last = Broadcast.objects.aggregate(last=Max("seq"))["last"] or 0
                seq = last + 1
                Broadcast.objects.filter(pk=row.pk).update(
                    seq=seq, status=Broadcast.Status.PENDING, sent_at=now, error=""
                )
            _group_send(layer, prepared, seq, now, held.check())
    except Exception as exc:
        _mark_failed(row, exc)
        metrics.publish_failures.inc()
        logger.warning("Broadcast row %s (%s) failed: %s", row.pk, row.type, exc)
        raise PublishFailed(
            f"Broadcast row {row.pk} could not be sent and is marked failed: {describe(exc)}"
        ) from exc
    try:
        with database_deadline():
            Broadcast.objects.filter(pk=row.pk).update(status=Broadcast.Status.SENT)
    except DatabaseError as exc:
        # Sent all the same: a pending row with an id is history, and never resent.
        logger.warning("Broadcast id=%s was sent but not marked sent: %s", seq, exc)
    row.seq, row.sent_at, row.status, row.error = seq, now, Broadcast.Status.SENT, ""
    metrics.published.inc()
    logger.info("Published broadcast id=%s type=%s%s", seq, prepared.type, on_topic(prepared.topic))
    return prepared.envelope(seq, now)


def send_saved_row(pk: int) -> None:
    """Send a row that was saved directly (the admin), after its transaction commits."""
    row = Broadcast.objects.get(pk=pk)
    if row.status == Broadcast.Status.PENDING and row.seq is None:
        send_row(row)


def _mark_failed(row: Broadcast, exc: BaseException) -> None:
    # A failed row keeps any id it was given: ids are never reused, so a client
    # never sees one id twice. History replay skips failed rows.
    error = describe(exc)
    try:
        with database_deadline():
            Broadcast.objects.filter(pk=row.pk).update(status=Broadcast.Status.FAILED, error=error)
    except DatabaseError as db_exc:
        # The database is the failure, often: the row stays pending, and a pending
        # row with no id is resent by `manage.py broadcast --resend-failed` later.
        logger.warning("Broadcast row %s could not be marked failed: %s", row.pk, db_exc)
    row.status, row.error = Broadcast.Status.FAILED, error


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def on_topic(topic: str | None) -> str:
    return f" topic={topic}" if topic is not None else ""
