"""
Channels' and asgiref's private parts between the consumer and the server: the
server's own ``send`` beneath the session middleware, and the single-callable mark;
and the close through the public ASGI ``send``, which every server takes.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from broadcast.protocol import CLOSE_NORMAL

logger = logging.getLogger(__name__)

# What the hub reads of an ASGI scope: a plain mapping (asgiref's TypedDicts are stricter).
Scope = dict[str, Any]

# Channels' InstanceSessionWrapper keeps the server's send as ``real_send``.
REAL_SEND = "real_send"
# asgiref's mark for an ASGI 3 application that is a plain function, not a class.
SINGLE_CALLABLE = "_asgi_single_callable"


def server_send(send: Any) -> Any:
    """
    The server's own ``send`` beneath Channels' session middleware, else ``send``.

    ``AuthMiddlewareStack`` wraps ``send`` in ``InstanceSessionWrapper.send``, which
    acts only on ``http.response.start`` (to save the session and set its cookie) and
    passes every ``websocket.send`` straight through.
    """
    while getattr(send, "__name__", "") == "send" and hasattr(
        getattr(send, "__self__", None), REAL_SEND
    ):
        send = getattr(send.__self__, REAL_SEND)
    return send


def mark_single_callable(app: Any) -> None:
    """Tell asgiref's and Channels' checks that ``app`` takes (scope, receive, send)."""
    setattr(app, SINGLE_CALLABLE, True)


async def close_through_send(send: Any, code: int, reason: str) -> None:
    """
    Close a connection through the ASGI ``send`` (the public path). daphne refuses
    codes that autobahn's public close does not allow (anything but 1000 and
    3000-4999): those clients get 1000 rather than no close at all.
    """
    event = {"type": "websocket.close", "code": code, "reason": reason}
    try:
        await send(event)
    except Exception as exc:
        if code == CLOSE_NORMAL:
            logger.debug("Could not close a client (%s)", exc)
            return
        logger.debug("The server refused close code %s (%s); closing with 1000", code, exc)
        with contextlib.suppress(Exception):
            await send({**event, "code": CLOSE_NORMAL})
