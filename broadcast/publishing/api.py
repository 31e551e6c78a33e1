"""
Publishing: the one place that calls ``group_send``.

Every way to publish (the API, the admin, the command, the signal) ends here.
A broadcast is validated and serialised once, persisted (unless ``persist=False``),
and sent after the transaction commits. A failure to reach the channel layer is
recorded on the row and raised to the caller.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from broadcast import metrics
from broadcast.conf import conf
from broadcast.models import Broadcast
from broadcast.protocol import BroadcastError, InvalidTopic, Prepared, prepare, relay_message
from broadcast.publishing import backpressure
from broadcast.publishing.sendlock import redis_client, send_lock
from broadcast.seams.layers import pubsub
from broadcast.stream import singleprocess
from broadcast.stream.layer import is_process_local, load_layer, needs_shared_layer

logger = logging.getLogger(__name__)

# Most ephemeral publishes of one process sent to the pub/sub layer in one pipeline.
PIPELINE_MAX = 64

USER_TOPIC_PREFIX = "user."


class PublishFailed(BroadcastError):
    """The broadcast was valid but could not be handed to the channel layer."""


def _check_reach(layer: Any) -> None:
    """On the in-memory layer, refuse to publish where no client can be reached."""
    if is_process_local(layer) and singleprocess.served_elsewhere():
        raise ImproperlyConfigured(
            needs_shared_layer(
                "publish() in this process cannot reach the WebSocket clients of the "
                "server process that serves this database"
            )
        )


def user_topic(user: Any) -> str:
    """The per-user topic of ``user`` (or of a primary key): ``user.<pk>``."""
    pk = getattr(user, "pk", user)
    if pk is None or isinstance(pk, bool):
        raise InvalidTopic(f"A per-user topic needs a saved user, got {user!r}.")
    return f"{USER_TOPIC_PREFIX}{pk}"


def _group_send(
    layer: Any, prepared: Prepared, msg_id: int | None, moment: Any, timeout: float
) -> None:
    message = relay_message(prepared.text(msg_id, moment), msg_id, prepared.topic)
    async_to_sync(_bounded_group_send)(layer, message, timeout)


async def _bounded_group_send(layer: Any, message: dict[str, Any], seconds: float) -> None:
    # Cancelled at the deadline, redis-py drops the connection, and a command Redis
    # had not run yet (a CLIENT PAUSE) is never run: failed means not delivered.
    await asyncio.wait_for(layer.group_send(conf.BROADCAST_GROUP, message), seconds)


def publish(
    type: str,  # noqa: A002 - the envelope's field name, as users know it
    payload: Any = None,
    *,
    topic: str | None = None,
    persist: bool = True,
    created_by: Any = None,
) -> dict[str, Any]:
    """
    Publish a broadcast and return its envelope: to every connected client, or with
    a ``topic``, to the clients subscribed to it.

    Raises InvalidBroadcast (a ValueError) for a bad type or payload, and
    PublishFailed when the channel layer cannot be reached; a persisted broadcast
    is then marked failed, with the error, and can be resent.

    Inside ``transaction.atomic()``, a persisted broadcast is sent when the outermost
    transaction commits; the returned envelope's ``id`` and ``timestamp`` are filled
    in at that moment (and nothing is sent if the transaction rolls back).
    """
    prepared = prepare(type, payload, topic=topic)
    layer = load_layer()
    _check_reach(layer)
    if not persist:
        return async_to_sync(_send_ephemeral)(prepared, layer)

    row = Broadcast(
        type=prepared.type,
        topic=prepared.topic or "",
        payload=payload,
        created_by=_user_or_none(created_by),
    )
    # Tells the post_save receiver that this row is sent here, not by the signal.
    row.sent_by_publish = True
    row.save()
    envelope = prepared.envelope(None, row.created_at)

    in_atomic = transaction.get_connection().in_atomic_block

    def send_after_commit() -> None:
        try:
            envelope.update(send_row(row, prepared, layer=layer))
        except PublishFailed:
            if not in_atomic:
                raise
            # Marked failed on its row and logged as one WARNING by send_row; Django
            # would log it again, with a stack, for an expected outage.

    # Inside atomic(), robust: a hook that raises would make Django skip every later
    # hook of the transaction, leaving their rows pending with no id. Each failure
    # is recorded on its row (failed, resendable) and logged instead.
    transaction.on_commit(send_after_commit, robust=in_atomic)
    return envelope


async def apublish(
    type: str,  # noqa: A002
    payload: Any = None,
    *,
    topic: str | None = None,
    persist: bool = True,
    created_by: Any = None,
) -> dict[str, Any]:
    """The async twin of :func:`publish`."""
    if not persist:
        # No database work: stay on the event loop instead of hopping to a thread.
        prepared, layer = prepare(type, payload, topic=topic), load_layer()
        _check_reach(layer)
        return await _send_ephemeral(prepared, layer)
    # database_sync_to_async closes the thread's connection like a request would.
    envelope: dict[str, Any] = await database_sync_to_async(publish)(
        type, payload, topic=topic, persist=persist, created_by=created_by
    )
    return envelope


def publish_to_user(
    user: Any,
    type: str,  # noqa: A002
    payload: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """:func:`publish` to ``user.<pk>``: every connection of that user, in every process."""
    return publish(type, payload, topic=user_topic(user), **options)


async def apublish_to_user(
    user: Any,
    type: str,  # noqa: A002
    payload: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """The async twin of :func:`publish_to_user`."""
    return await apublish(type, payload, topic=user_topic(user), **options)


def _wait_for_relays(layer: Any, budget: float | None = None) -> None:
    """Backpressure (broadcast/publishing/backpressure.py), where the layer allows it."""
    if conf.BROADCAST_MAX_RELAY_BACKLOG is None or not backpressure.applies_to(layer):
        return
    waited = backpressure.wait_for_relays(redis_client(layer), layer, budget)
    if waited >= 0.001:
        metrics.backpressure_seconds.inc(waited)


async def _send_ephemeral(prepared: Prepared, layer: Any) -> dict[str, Any]:
    try:
        if conf.BROADCAST_MAX_RELAY_BACKLOG is not None and backpressure.applies_to(layer):
            await sync_to_async(_wait_for_relays, thread_sensitive=False)(layer)
        now = timezone.now()
        message = relay_message(prepared.text(None, now), None, prepared.topic)
        # Several at once from this process: one round trip, and one message for the
        # relays to receive, where the layer allows it.
        await pubsub.group_send(
            layer,
            conf.BROADCAST_GROUP,
            message,
            PIPELINE_MAX,
            batches=True,
        )
    except Exception as exc:
        metrics.publish_failures.inc()
        logger.warning("Ephemeral broadcast %r failed: %s", prepared.type, exc)
        raise PublishFailed(f"Could not reach the channel layer: {_describe(exc)}") from exc
    metrics.published.inc()
    logger.info("Published ephemeral broadcast type=%s%s", prepared.type, _on(prepared.topic))
    return prepared.envelope(None, now)


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
            prepared = prepare(row.type, row.payload, topic=row.topic_or_none)
        except BroadcastError as exc:
            _mark_failed(row, exc)
            raise
    try:
        with send_lock(layer) as held:
            # Pacing gets half of the lock's time at most; the send needs the rest.
            _wait_for_relays(layer, held.remaining() / 2)
            now = timezone.now()
            with transaction.atomic():
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
            f"Broadcast row {row.pk} could not be sent and is marked failed: {_describe(exc)}"
        ) from exc
    Broadcast.objects.filter(pk=row.pk).update(status=Broadcast.Status.SENT)
    row.seq, row.sent_at, row.status, row.error = seq, now, Broadcast.Status.SENT, ""
    metrics.published.inc()
    logger.info("Published broadcast id=%s type=%s%s", seq, prepared.type, _on(prepared.topic))
    return prepared.envelope(seq, now)


def send_saved_row(pk: int) -> None:
    """Send a row that was saved directly (the admin), after its transaction commits."""
    row = Broadcast.objects.get(pk=pk)
    if row.status == Broadcast.Status.PENDING and row.seq is None:
        send_row(row)


def resend(row: Broadcast, *, created_by: Any = None) -> dict[str, Any]:
    """
    Send a broadcast again. A row that never got an id is retried in place. A row
    with an id is published again as a new row with a new id: a sent one because
    clients have that id already, a failed one because its id is burnt (it stays
    on the old row, marked resent, so that history keeps no hole to reset over).
    """
    if row.seq is None and row.status != Broadcast.Status.SENT:
        return send_row(row)
    envelope = publish(
        row.type, row.payload, topic=row.topic_or_none, created_by=created_by or row.created_by
    )
    if row.status != Broadcast.Status.SENT:
        note = f"resent as id {envelope['id']}"
        Broadcast.objects.filter(pk=row.pk).update(status=Broadcast.Status.RESENT, error=note)
        row.status, row.error = Broadcast.Status.RESENT, note
    return envelope


def _mark_failed(row: Broadcast, exc: BaseException) -> None:
    # A failed row keeps any id it was given: ids are never reused, so a client
    # never sees one id twice. History replay skips failed rows.
    error = _describe(exc)
    Broadcast.objects.filter(pk=row.pk).update(status=Broadcast.Status.FAILED, error=error)
    row.status, row.error = Broadcast.Status.FAILED, error


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _on(topic: str | None) -> str:
    return f" topic={topic}" if topic is not None else ""


def _user_or_none(user: Any) -> Any:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user
