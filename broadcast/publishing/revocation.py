"""
Revoking access: :func:`disconnect_user` closes every open connection of a user, in
every process, with 4003 ("access revoked"); the user model's signals call it when a
user is deactivated, deleted or changes password.

A revocation is a broadcast persisted on the reserved topic ``hub.revoke``
(:mod:`broadcast.group`): it takes its id under the send lock like any broadcast, so
once :func:`disconnect_user` returns, no broadcast published after it reaches those
connections, in any process; a relay that missed it in the layer catches it up from
history. Connect tokens are bound to the password (:mod:`broadcast.clients.tokens`),
so those minted before a change no longer connect.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from django.core.exceptions import ImproperlyConfigured

from broadcast.group import REVOKE_TOPIC
from broadcast.protocol import prepare
from broadcast.publishing.api import publish_prepared
from broadcast.publishing.send import PublishFailed

logger = logging.getLogger(__name__)

REVOKE_TYPE = "hub.revoke"
# Set on a user instance by the pre_save receiver: what its save revokes, and why.
_PENDING = "_broadcast_revocation"


def disconnect_user(user: Any) -> dict[str, Any]:
    """
    Close every connection of ``user`` (a user or its primary key) in every process,
    now or, inside ``transaction.atomic()``, when the transaction commits; returns the
    revocation's envelope. Raises PublishFailed, as publish() does, when it cannot be
    sent. A user whose access is still valid may connect again: deactivate the user
    or change the password to keep it out.
    """
    pk = getattr(user, "pk", user)
    if pk is None or isinstance(pk, bool):
        raise ValueError(f"disconnect_user needs a saved user or a primary key, got {user!r}.")
    payload = {"owner": str(pk)}
    prepared = prepare(REVOKE_TYPE, payload, topic=REVOKE_TOPIC, allow_reserved=True)
    return publish_prepared(prepared, payload)


async def adisconnect_user(user: Any) -> dict[str, Any]:
    """The async twin of :func:`disconnect_user`."""
    envelope: dict[str, Any] = await database_sync_to_async(disconnect_user)(user)
    return envelope


def before_user_saved(sender: Any, instance: Any, raw: bool, update_fields: Any, **_: Any) -> None:
    """Note whether this save deactivates the user or changes its password."""
    if raw or instance.pk is None:
        return
    watched = {"password", "is_active"}
    if update_fields is not None and not watched & set(update_fields):
        return  # a login's last_login, say: nothing to read
    fields = [name for name in ("password", "is_active") if _has_field(sender, name)]
    if not fields:
        return
    before = sender._meta.default_manager.filter(pk=instance.pk).values(*fields).first()
    if before is None:  # a new user
        return
    if "password" in before and before["password"] != instance.password:
        setattr(instance, _PENDING, "its password changed")
    elif before.get("is_active") and not getattr(instance, "is_active", True):
        setattr(instance, _PENDING, "it was deactivated")


def after_user_saved(sender: Any, instance: Any, raw: bool, **_: Any) -> None:
    reason = instance.__dict__.pop(_PENDING, None)
    if reason is not None:
        _revoke(instance.pk, reason)


def after_user_deleted(sender: Any, instance: Any, **_: Any) -> None:
    _revoke(instance.pk, "it was deleted")


def _revoke(pk: Any, reason: str) -> None:
    try:
        disconnect_user(pk)
    except (PublishFailed, ImproperlyConfigured) as exc:
        # The save stands (its tokens no longer connect): failing it would undo nothing.
        logger.error("Could not close the connections of user %s, though %s: %s", pk, reason, exc)
    else:
        logger.info("Closing the connections of user %s: %s", pk, reason)


def _has_field(model: Any, name: str) -> bool:
    return any(field.name == name for field in model._meta.concrete_fields)
