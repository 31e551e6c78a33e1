"""
The messages the broadcast group carries, from publishers to each process's relay: a
broadcast (its envelope text, id and topic), and a batch of them sent as one.

A *revocation* is a broadcast too, persisted with its id on the reserved topic
``hub.revoke`` (no client can subscribe to it): it travels in the stream's order, is
caught up from history like any broadcast a relay missed, and the fan-out closes the
connections of the owner its payload names instead of delivering it.
"""

from __future__ import annotations

from typing import Any

MESSAGE_TYPE = "broadcast.message"
BATCH_TYPE = "broadcast.batch"
REVOKE_TOPIC = "hub.revoke"


def relay_message(text: str, msg_id: int | None, topic: str | None = None) -> dict[str, Any]:
    """
    The group message each process's relay receives. The topic rides beside the
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
