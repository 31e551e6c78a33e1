"""
A broadcast (or a control frame) framed once for every client that gets it: the
WebSocket frame a direct writer writes as it is, and the ASGI event for the public
path. A batch of them is one write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broadcast.protocol import text_frame


@dataclass(frozen=True, slots=True)
class Outgoing:
    """
    One message for clients: its frame for a direct writer, its ASGI event, its id. Or
    a batch of them (``parts``), whose frame is theirs concatenated, for one write.
    """

    frame: bytes
    event: dict[str, Any] | None
    size: int
    id: int | None = None
    parts: tuple[Outgoing, ...] = ()

    @classmethod
    def of_text(cls, text: str, msg_id: int | None = None) -> Outgoing:
        data = text.encode()
        return cls(text_frame(data), {"type": "websocket.send", "text": text}, len(data), msg_id)

    @classmethod
    def batch(cls, messages: list[Outgoing]) -> Outgoing:
        """``messages`` as one (itself, if it is one); its id is the batch's lowest id."""
        if len(messages) == 1:
            return messages[0]
        ids = [message.id for message in messages if message.id is not None]
        return cls(
            b"".join(message.frame for message in messages),
            None,
            sum(message.size for message in messages),
            min(ids) if ids else None,
            tuple(messages),
        )
