"""
Channels' and asgiref's private parts between the consumer and the server: the
server's own ``send`` beneath the session middleware, and the single-callable mark.
"""

from __future__ import annotations

from typing import Any

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
