"""
The messages the broadcast group carries between processes: one broadcast
(:func:`relay_message`), or several published at once from one process
(:func:`batch_message`), which each process's relay unpacks in order.
"""

from __future__ import annotations

from typing import Any

MESSAGE_TYPE = "broadcast.message"
BATCH_TYPE = "broadcast.batch"


def relay_message(text: str, msg_id: int | None, topic: str | None = None) -> dict[str, Any]:
    """
    The channel-layer message the process relays fan out. The topic rides beside the
    text so that a relay routes it without decoding the envelope.
    """
    return {"type": MESSAGE_TYPE, "id": msg_id, "text": text, "topic": topic}


def batch_message(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Several relay messages as one, in order: each process receives and decodes it once."""
    return {"type": BATCH_TYPE, "messages": messages}


def unpacked(message: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The messages a batch holds, in order; None if ``message`` is not a batch."""
    if message.get("type") != BATCH_TYPE:
        return None
    inner = message.get("messages")
    if not isinstance(inner, list) or not inner:
        return None  # the hub ignores it, with a warning, as any message it cannot read
    return [item if isinstance(item, dict) else {"type": None} for item in inner]
