"""
The protocol, in one place: the envelope every client receives (``{"id", "type",
"topic", "payload", "timestamp"}``), every control frame (``hub.*``) and close code,
and the WebSocket text frame. The messages the broadcast group carries between
processes are :mod:`broadcast.group`'s.

A broadcast is validated and its payload serialised once, here; the envelope text
is then assembled around that serialised payload at send time, when the delivery
id and timestamp are known. No client ever re-encodes it. Server-to-client frames
are not masked, so a broadcast is the same bytes for every client (like
gorilla/websocket's ``PreparedMessage``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from broadcast.conf import conf

# \A and \Z, not ^ and $: "$" also matches before a final newline ("a\n").
TYPE_RE = re.compile(r"\A[A-Za-z0-9_.:\-]{1,64}\Z")
RESERVED_PREFIX = "hub."
# Topics are named like types; ``None`` is the global stream every client gets.
TOPIC_RE = TYPE_RE
# The longest id the envelope can carry: sizes are checked against it so that an
# envelope accepted at publish time never grows past the limit when its id is set.
_LONGEST_ID = 2**63 - 1
_TIMESTAMP_SAMPLE = "2026-01-01T00:00:00.000Z"
# A \u0000 escape in JSON text, not an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

# Close codes (RFC 6455, and the hub's own 4001, 4003 and 4008): docs/protocol.md says
# when each is sent.
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_REVOKED = 4003
CLOSE_SLOW_CLIENT = 4008


class BroadcastError(Exception):
    """Base class for every error the broadcast API raises."""


class InvalidBroadcast(BroadcastError, ValueError):
    """The broadcast's type or payload is not acceptable."""


class InvalidType(InvalidBroadcast):
    """The type is not 1-64 characters of [A-Za-z0-9_.:-], or is reserved."""


class InvalidTopic(InvalidBroadcast):
    """The topic is not 1-64 characters of [A-Za-z0-9_.:-], or is reserved."""


class InvalidPayload(InvalidBroadcast, TypeError):
    """The payload cannot be serialised as JSON."""


class PayloadTooLarge(InvalidBroadcast):
    """The serialised envelope is over BROADCAST_MAX_MESSAGE_BYTES."""


def validate_type(message_type: Any, *, allow_reserved: bool = False) -> str:
    if not isinstance(message_type, str) or not TYPE_RE.match(message_type):
        raise InvalidType(
            f"Broadcast type must be 1-64 characters of letters, digits and '_.:-', "
            f"got {message_type!r}."
        )
    if message_type.startswith(RESERVED_PREFIX) and not allow_reserved:
        raise InvalidType(
            f"Broadcast types starting with {RESERVED_PREFIX!r} are reserved for the "
            f"hub's control frames, got {message_type!r}."
        )
    return message_type


def validate_topic(topic: Any, *, allow_reserved: bool = False) -> str | None:
    """A topic name, or None for the global stream; InvalidTopic otherwise."""
    if topic is None:
        return None
    if not isinstance(topic, str) or not TOPIC_RE.match(topic):
        raise InvalidTopic(
            f"Topic must be 1-64 characters of letters, digits and '_.:-', got {_short(topic)}."
        )
    if topic.startswith(RESERVED_PREFIX) and not allow_reserved:
        raise InvalidTopic(f"Topics starting with {RESERVED_PREFIX!r} are reserved, got {topic!r}.")
    return topic


def dumps(value: Any) -> str:
    """Compact JSON, as sent on the wire; DjangoJSONEncoder types are accepted."""
    return json.dumps(
        value, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def format_timestamp(moment: dt.datetime) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-25T18:41:28.123Z``."""
    m = moment.astimezone(dt.UTC)
    # By hand rather than strftime: faster, for a step that runs for every frame built,
    # and strftime leaves years before 1000 unpadded, which RFC 3339 forbids.
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T"
        f"{m.hour:02d}:{m.minute:02d}:{m.second:02d}.{m.microsecond // 1000:03d}Z"
    )


# (millisecond, its RFC 3339 text): the timestamp format's precision is the millisecond,
# so every frame built within one shares the text (connect bursts build thousands).
_stamp: tuple[int, str] = (-1, "")


def now_timestamp() -> str:
    """``format_timestamp`` of the current time, formatted once per millisecond."""
    global _stamp
    ms = time.time_ns() // 1_000_000
    cached_ms, text = _stamp
    if ms != cached_ms:
        seconds, millis = divmod(ms, 1000)
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=millis * 1000)
        text = format_timestamp(moment)
        _stamp = (ms, text)
    return text


def build_text(
    msg_id: int | None,
    type_json: str,
    payload_json: str,
    timestamp: str,
    topic: str | None = None,
) -> str:
    """Assemble the envelope text from already-serialised parts."""
    id_json = "null" if msg_id is None else str(int(msg_id))
    # A valid topic needs no escaping (TOPIC_RE): quoting it is enough.
    topic_json = "null" if topic is None else f'"{topic}"'
    return (
        f'{{"id":{id_json},"type":{type_json},"topic":{topic_json},'
        f'"payload":{payload_json},"timestamp":"{timestamp}"}}'
    )


@dataclass(frozen=True)
class Prepared:
    """A validated broadcast with its payload serialised once."""

    type: str
    payload_json: str
    topic: str | None = None

    def text(self, msg_id: int | None, moment: dt.datetime) -> str:
        return build_text(
            msg_id, json.dumps(self.type), self.payload_json, format_timestamp(moment), self.topic
        )

    def envelope(self, msg_id: int | None, moment: dt.datetime) -> dict[str, Any]:
        """The envelope as a dict, with the payload as the client will decode it."""
        return {
            "id": msg_id,
            "type": self.type,
            "topic": self.topic,
            "payload": json.loads(self.payload_json),
            "timestamp": format_timestamp(moment),
        }


def prepare(
    message_type: Any, payload: Any, *, topic: Any = None, allow_reserved: bool = False
) -> Prepared:
    """Validate a broadcast and serialise its payload, or raise InvalidBroadcast."""
    validate_type(message_type, allow_reserved=allow_reserved)
    validate_topic(topic, allow_reserved=allow_reserved)
    try:
        payload_json = dumps(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(
            f"Broadcast payload must be JSON-serialisable: {exc} (payload {_short(payload)})."
        ) from exc
    longest = build_text(
        _LONGEST_ID, json.dumps(message_type), payload_json, _TIMESTAMP_SAMPLE, topic
    )
    try:
        size = len(longest.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800") has no UTF-8 form
        raise InvalidPayload(
            f"Broadcast payload must be valid Unicode ({exc.reason}): payload {_short(payload)}."
        ) from exc
    if _NUL_ESCAPE.search(payload_json):
        # PostgreSQL's jsonb cannot store it: refused on every database alike.
        raise InvalidPayload(
            f"Broadcast payload strings cannot contain the NUL character (\\u0000) "
            f"(payload {_short(payload)})."
        )
    limit = conf.BROADCAST_MAX_MESSAGE_BYTES
    if size > limit:
        raise PayloadTooLarge(
            f"Broadcast envelope is {size} bytes, over BROADCAST_MAX_MESSAGE_BYTES ({limit})."
        )
    return Prepared(type=message_type, payload_json=payload_json, topic=topic)


def control_text(message_type: str, payload: Any, moment: dt.datetime) -> str:
    """A hub control frame (``hub.*``) in the same envelope shape, with a null id."""
    return build_text(None, json.dumps(message_type), dumps(payload), format_timestamp(moment))


def welcome_text(last_id: int) -> str:
    """
    ``hub.welcome``, with the stream position a client starts after; built without a
    JSON encoder, since every connecting client gets one.
    """
    return build_text(None, '"hub.welcome"', f'{{"last_id":{int(last_id)}}}', now_timestamp())


def subscribed_text(granted: list[str], denied: list[str]) -> str:
    """``hub.subscribed``: what a subscribe was granted and denied."""
    # Topic names need no encoder (they are validated ASCII), and the millisecond
    # timestamp is shared: a burst of subscribing connects builds thousands of these.
    payload = json.dumps({"topics": granted, "denied": denied}, separators=(",", ":"))
    return build_text(None, '"hub.subscribed"', payload, now_timestamp())


def unsubscribed_text(topics: list[str]) -> str:
    return control_text("hub.unsubscribed", {"topics": topics}, timezone.now())


def pong_text(last_id: int) -> str:
    """``hub.pong``, with the stream position: a client may resume from it."""
    return control_text("hub.pong", {"last_id": last_id}, timezone.now())


def error_text(reason: str) -> str:
    return control_text("hub.error", {"error": reason}, timezone.now())


def expiring_text(seconds: int) -> str:
    """``hub.expiring``: the connect token expires in ``seconds``; send ``hub.refresh``."""
    return control_text("hub.expiring", {"expires_in": seconds}, timezone.now())


def refreshed_text(seconds: int) -> str:
    """``hub.refreshed``: the new token is accepted, and expires in ``seconds``."""
    return control_text("hub.refreshed", {"expires_in": seconds}, timezone.now())


def reset_text(last_id: int, from_id: int) -> str:
    """``hub.reset``: the ids after ``from_id`` up to ``last_id`` will not be sent."""
    return control_text("hub.reset", {"last_id": last_id, "from": from_id}, timezone.now())


def resumed_text(from_id: int, count: int, last_id: int) -> str:
    """``hub.resumed``: ``count`` replayed after ``from_id``; the position reached."""
    payload = {"from": from_id, "count": count, "last_id": last_id}
    return control_text("hub.resumed", payload, timezone.now())


def text_frame(data: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455, section 5.2)."""
    length = len(data)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 65536:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + data


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
