"""
Signals: ``broadcast_requested`` lets any app publish without importing the API,
and the ``post_save`` receiver publishes Broadcast rows saved directly (the admin).
"""

from __future__ import annotations

import contextlib
from typing import Any

from django.db import transaction
from django.dispatch import Signal

#: ``broadcast_requested.send(sender=..., type=..., payload=..., topic=None, persist=True)``
#: publishes a broadcast; errors are raised to the sender, as publish() raises them.
broadcast_requested = Signal()


def on_broadcast_requested(
    sender: Any,
    type: str,
    payload: Any = None,
    persist: bool = True,
    topic: str | None = None,
    **kwargs: Any,  # noqa: A002
) -> dict[str, Any]:
    from broadcast.publishing.api import publish

    return publish(type, payload, topic=topic, persist=persist, created_by=kwargs.get("created_by"))


def on_broadcast_saved(sender: Any, instance: Any, created: bool, raw: bool, **kwargs: Any) -> None:
    if raw or not created or instance.sent_by_publish:
        return
    from broadcast.publishing.api import PublishFailed, send_saved_row

    pk = instance.pk

    # A named function, not functools.partial: Django logs a robust hook's failure
    # with the hook's __qualname__, which a partial lacks, so the failure became an
    # AttributeError (a 500 in the admin) instead of a log line.
    def send_after_commit() -> None:
        # A failure is marked on the row and logged as one WARNING: no stack to add.
        with contextlib.suppress(PublishFailed):
            send_saved_row(pk)

    # robust: anything else (a bug) is logged with its stack rather than turning the
    # admin's save into a 500; the admin reports the row's status.
    transaction.on_commit(send_after_commit, robust=True)
