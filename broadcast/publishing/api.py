"""
Publishing: every way to publish (the API, the admin, the command, the signal, HTTP)
ends here.

A broadcast is validated and serialised once, persisted (unless ``persist=False``),
and sent after the transaction commits (:mod:`broadcast.publishing.send`). A failure
to store it or to reach the channel layer is recorded on the row and raised to the
caller as PublishFailed.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, transaction
from django.utils import timezone

from broadcast import metrics
from broadcast.conf import conf
from broadcast.group import REVOKE_TOPIC, relay_message
from broadcast.models import Broadcast
from broadcast.protocol import InvalidTopic, Prepared, prepare
from broadcast.publishing import backpressure
from broadcast.publishing.deadline import database_deadline
from broadcast.publishing.send import (
    PublishFailed,
    describe,
    on_topic,
    send_row,
    send_saved_row,
    wait_for_relays,
)
from broadcast.seams.layers import pubsub
from broadcast.stream import singleprocess
from broadcast.stream.layer import is_process_local, load_layer, needs_shared_layer

logger = logging.getLogger(__name__)

__all__ = ["PublishFailed", "apublish", "publish", "resend", "send_row", "send_saved_row"]

# Most ephemeral publishes of one process sent to the pub/sub layer in one pipeline.
PIPELINE_MAX = 64

USER_TOPIC_PREFIX = "user."


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
    PublishFailed when the database cannot store it within 5 s (DATABASE_SECONDS)
    or the channel layer cannot be reached; a stored broadcast is then marked
    failed, with the error, and can be resent.

    Inside ``transaction.atomic()``, a persisted broadcast is sent when the outermost
    transaction commits; the returned envelope's ``id`` and ``timestamp`` are filled
    in at that moment (and nothing is sent if the transaction rolls back).
    """
    return publish_prepared(prepare(type, payload, topic=topic), payload, persist, created_by)


def publish_prepared(
    prepared: Prepared, payload: Any, persist: bool = True, created_by: Any = None
) -> dict[str, Any]:
    """:func:`publish` of a broadcast validated already (a revocation's reserved topic)."""
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
    try:
        with database_deadline():
            row.save()
    except DatabaseError as exc:
        metrics.publish_failures.inc()
        logger.warning("Broadcast %r could not be stored: %s", prepared.type, exc)
        raise PublishFailed(f"The database cannot store the broadcast: {describe(exc)}") from exc
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


async def _send_ephemeral(prepared: Prepared, layer: Any) -> dict[str, Any]:
    try:
        if conf.BROADCAST_MAX_RELAY_BACKLOG is not None and backpressure.applies_to(layer):
            await sync_to_async(wait_for_relays, thread_sensitive=False)(layer)
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
        raise PublishFailed(f"Could not reach the channel layer: {describe(exc)}") from exc
    metrics.published.inc()
    logger.info("Published ephemeral broadcast type=%s%s", prepared.type, on_topic(prepared.topic))
    return prepared.envelope(None, now)


def resend(row: Broadcast, *, created_by: Any = None) -> dict[str, Any]:
    """
    Send a broadcast again. A row that never got an id is retried in place. A row
    with an id is published again as a new row with a new id: a sent one because
    clients have that id already, a failed one because its id is burnt (it stays
    on the old row, marked resent, so that history keeps no hole to reset over).
    """
    if row.seq is None and row.status != Broadcast.Status.SENT:
        return send_row(row)
    # A revocation's reserved type and topic are its own (revocation.py).
    revocation = row.topic == REVOKE_TOPIC
    prepared = prepare(row.type, row.payload, topic=row.topic_or_none, allow_reserved=revocation)
    envelope = publish_prepared(prepared, row.payload, created_by=created_by or row.created_by)
    if row.status != Broadcast.Status.SENT:
        note = f"resent as id {envelope['id']}"
        Broadcast.objects.filter(pk=row.pk).update(status=Broadcast.Status.RESENT, error=note)
        row.status, row.error = Broadcast.Status.RESENT, note
    return envelope


def _user_or_none(user: Any) -> Any:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user
