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
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.db.models.signals import post_delete, post_save, pre_save

from broadcast.group import REVOKE_TOPIC
from broadcast.protocol import prepare
from broadcast.publishing.api import publish_prepared
from broadcast.publishing.send import PublishFailed

logger = logging.getLogger(__name__)

REVOKE_TYPE = "hub.revoke"
# The fields whose change takes a user's access back.
WATCHED = ("password", "is_active")
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
    # As a connection names its owner: "07" and 7 are one user, as are a UUID's spellings.
    pk = get_user_model()._meta.pk.to_python(pk)
    payload = {"owner": str(pk)}
    prepared = prepare(REVOKE_TYPE, payload, topic=REVOKE_TOPIC, allow_reserved=True)
    return publish_prepared(prepared, payload)


async def adisconnect_user(user: Any) -> dict[str, Any]:
    """The async twin of :func:`disconnect_user`."""
    envelope: dict[str, Any] = await database_sync_to_async(disconnect_user)(user)
    return envelope


def watch_users() -> None:
    """
    Revoke on every save and delete of the user model, of its proxies and of its
    subclasses (Django sends their signals with their own class). ``QuerySet.update()``
    and raw saves (fixtures) send none: docs/security.md.
    """
    global _user_model
    try:
        _user_model = get_user_model()
    except (ImproperlyConfigured, LookupError):  # no user model: no user to revoke
        return
    pre_save.connect(before_user_saved, dispatch_uid="broadcast.revocation.pre_save")
    post_save.connect(after_user_saved, dispatch_uid="broadcast.revocation.post_save")
    post_delete.connect(after_user_deleted, dispatch_uid="broadcast.revocation.post_delete")


def before_user_saved(
    sender: Any, instance: Any, raw: bool, using: str, update_fields: Any, **_: Any
) -> None:
    """Note whether this save deactivates the user or changes its password."""
    if not _is_user(sender):
        return
    instance.__dict__.pop(_PENDING, None)  # left by a save that failed after its pre_save
    if raw or instance.pk is None:
        return
    fields = [
        name
        for name in WATCHED
        if (update_fields is None or name in update_fields) and _has_field(sender, name)
    ]
    if not fields:
        return  # a login's last_login, say: nothing to read
    # The database written to, and every row: not a replica, not a filtering manager.
    rows = sender._meta.base_manager.db_manager(using).filter(pk=instance.pk)
    before = rows.values(*fields).first()
    if before is None:  # a new user
        return
    if "password" in before and before["password"] != instance.password:
        setattr(instance, _PENDING, "its password changed")
    elif before.get("is_active") and not getattr(instance, "is_active", True):
        setattr(instance, _PENDING, "it was deactivated")


def after_user_saved(sender: Any, instance: Any, **_: Any) -> None:
    if _is_user(sender):
        reason = instance.__dict__.pop(_PENDING, None)
        if reason is not None:
            _revoke(instance.pk, reason)


def after_user_deleted(sender: Any, instance: Any, **_: Any) -> None:
    if _is_user(sender):
        _revoke(instance.pk, "it was deleted")


def _revoke(pk: Any, reason: str) -> None:
    try:
        disconnect_user(pk)
    except (PublishFailed, ImproperlyConfigured) as exc:
        # The save stands (its tokens no longer connect): failing it would undo nothing.
        logger.error("Could not close the connections of user %s, though %s: %s", pk, reason, exc)
    else:
        # Inside atomic(), sent when it commits; a failure then is the row's WARNING.
        logger.info("Revoking the access of user %s: %s", pk, reason)


_user_model: type | None = None


def _is_user(sender: Any) -> bool:
    return _user_model is not None and isinstance(sender, type) and issubclass(sender, _user_model)


def _has_field(model: Any, name: str) -> bool:
    return any(field.name == name for field in model._meta.concrete_fields)
