import datetime as dt
import decimal
import json
import re
import uuid

import pytest
from django.utils import timezone

from broadcast import InvalidPayload, InvalidTopic, InvalidType, PayloadTooLarge
from broadcast.protocol import control_text, format_timestamp, prepare, welcome_text


@pytest.mark.parametrize("name", ["a", "announcement", "chat.message", "x:y-z_1", "A" * 64])
def test_valid_types_are_accepted(name):
    assert prepare(name, None).type == name


@pytest.mark.parametrize(
    "name", ["", "A" * 65, "has space", "émoji", "semi;colon", "a\n", "a\nforged", None, 42]
)
def test_invalid_types_are_refused_with_the_value_in_the_message(name):
    with pytest.raises(InvalidType, match=re.escape(repr(name)[:20])):
        prepare(name, None)


def test_the_hub_prefix_is_reserved():
    with pytest.raises(InvalidType, match="reserved"):
        prepare("hub.welcome", {})


def test_invalid_broadcasts_are_value_errors_and_bad_payloads_type_errors():
    with pytest.raises(ValueError):
        prepare("bad type", None)
    with pytest.raises(TypeError):
        prepare("ok", {"x": object()})


@pytest.mark.parametrize("payload", [{"x": object()}, {1, 2}, float("nan")])
def test_unserialisable_payloads_are_refused(payload):
    with pytest.raises(InvalidPayload, match="JSON-serialisable"):
        prepare("ok", payload)


def test_django_json_encoder_types_are_accepted():
    moment = dt.datetime(2026, 11, 25, 18, 41, 28, tzinfo=dt.UTC)
    prepared = prepare(
        "ok", {"at": moment, "price": decimal.Decimal("1.50"), "id": uuid.UUID(int=1)}
    )
    assert json.loads(prepared.payload_json) == {
        "at": "2026-11-25T18:41:28Z",
        "price": "1.50",
        "id": "00000000-0000-0000-0000-000000000001",
    }


def test_oversize_envelopes_are_refused(settings):
    settings.BROADCAST_MAX_MESSAGE_BYTES = 200
    prepare("ok", "x" * 80)
    with pytest.raises(PayloadTooLarge, match=r"over BROADCAST_MAX_MESSAGE_BYTES \(200\)"):
        prepare("ok", "x" * 200)


def test_size_is_counted_in_utf8_bytes(settings):
    settings.BROADCAST_MAX_MESSAGE_BYTES = 200
    with pytest.raises(PayloadTooLarge):
        prepare("ok", "é" * 80)  # 80 characters, 160 bytes


def test_envelope_text_is_the_documented_shape():
    prepared = prepare("announcement", {"text": "Deploy at 18:00"})
    moment = dt.datetime(2026, 11, 25, 18, 41, 28, 123456, tzinfo=dt.UTC)
    assert json.loads(prepared.text(42, moment)) == {
        "id": 42,
        "type": "announcement",
        "topic": None,
        "payload": {"text": "Deploy at 18:00"},
        "timestamp": "2026-11-25T18:41:28.123Z",
    }
    assert json.loads(prepared.text(None, moment))["id"] is None


def test_a_topic_rides_in_the_envelope():
    moment = dt.datetime(2026, 11, 25, 18, 41, 28, 123456, tzinfo=dt.UTC)
    prepared = prepare("order.shipped", {"order": 7}, topic="user.42")
    assert json.loads(prepared.text(3, moment))["topic"] == "user.42"
    assert prepared.envelope(3, moment)["topic"] == "user.42"


@pytest.mark.parametrize(
    "topic", ["", "a b", "x" * 65, "hub.internal", "caf\u00e9", "a\n", 7, ["a"], True]
)
def test_malformed_or_reserved_topics_are_refused(topic):
    with pytest.raises(InvalidTopic):
        prepare("ok", None, topic=topic)


def test_the_size_limit_counts_the_topic(settings):
    settings.BROADCAST_MAX_MESSAGE_BYTES = 200
    payload = "x" * (200 - len(prepare("ok", "").text(2**63 - 1, dt.datetime.now(dt.UTC))) - 1)
    prepare("ok", payload)
    with pytest.raises(PayloadTooLarge):
        prepare("ok", payload, topic="t" * 64)


def test_timestamps_are_utc_with_milliseconds():
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert format_timestamp(dt.datetime(2026, 1, 1, 2, 0, 0, 5000, tzinfo=plus_two)) == (
        "2026-01-01T00:00:00.005Z"
    )


def test_the_welcome_frame_is_a_control_frame_stamped_now():
    now = timezone.now()
    before = now.replace(microsecond=now.microsecond // 1000 * 1000)  # the format's precision
    text = welcome_text(42)
    after = timezone.now()
    frame = json.loads(text)
    stamp = dt.datetime.fromisoformat(frame["timestamp"].replace("Z", "+00:00"))
    assert text == control_text("hub.welcome", {"last_id": 42}, stamp)
    assert before <= stamp <= after
