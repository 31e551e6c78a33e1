"""``POST /broadcast/publish``, the HTTP publish API, through Django's test client."""

import json

import pytest

from broadcast.models import Broadcast
from tests.clients import connect, frame

KEY = "k" * 16 + "-first"
OTHER = "o" * 16 + "-second"


@pytest.fixture
def keys(settings):
    settings.BROADCAST_API_KEYS = [OTHER, KEY]


def post(client, body, key=KEY, **extra):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    return client.post(
        "/broadcast/publish", data, content_type="application/json", **headers, **extra
    )


@pytest.mark.django_db(transaction=True)
async def test_a_published_broadcast_reaches_clients_and_answers_201(keys, async_client, hub):
    listener = await connect(query="?topics=ops")
    await frame(listener)
    response = await async_client.post(
        "/broadcast/publish",
        {"type": "deploy", "payload": {"v": 2}, "topic": "ops"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 201
    envelope = response.json()
    assert (envelope["type"], envelope["topic"], envelope["payload"]) == ("deploy", "ops", {"v": 2})
    got = await frame(listener)
    assert got["id"] == envelope["id"] and got["payload"] == {"v": 2}
    await listener.disconnect()


@pytest.mark.django_db
def test_without_keys_the_endpoint_does_not_exist(client, settings):
    settings.BROADCAST_API_KEYS = []
    assert post(client, {"type": "x"}).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-key-but-long-enough", f"Basic {KEY}", "Bearer", f"Bearer {KEY}x"],
)
def test_a_missing_or_wrong_key_gets_401(client, keys, header):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.post("/broadcast/publish", "{}", content_type="application/json", **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert not Broadcast.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("not json", "not JSON"),
        ("[1]", "JSON object"),
        ({"payload": 1}, "'type'"),
        ({"type": "hub.x"}, "reserved"),
        ({"type": "x", "topic": "a b"}, "Topic"),
        ({"type": "x", "persist": "yes"}, "persist"),
        ({"type": "x", "extra": 1}, "unknown field"),
    ],
)
def test_bad_input_gets_400_with_the_reason(client, keys, body, fragment):
    response = post(client, body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]
    assert not Broadcast.objects.exists()


@pytest.mark.django_db
def test_an_oversize_body_or_envelope_gets_413(client, keys, settings):
    settings.BROADCAST_MAX_MESSAGE_BYTES = 1000
    assert post(client, {"type": "x", "payload": "y" * 5000}).status_code == 413
    response = post(client, {"type": "x", "payload": "y" * 1500})
    assert response.status_code == 413
    assert "BROADCAST_MAX_MESSAGE_BYTES" in response.json()["error"]


@pytest.mark.django_db
def test_other_methods_get_405(client, keys):
    response = client.get("/broadcast/publish", HTTP_AUTHORIZATION=f"Bearer {KEY}")
    assert response.status_code == 405 and response["Allow"] == "POST"


@pytest.mark.django_db(transaction=True)
def test_a_layer_that_is_down_gets_503_and_a_failed_row(client, keys, unreachable_layer, caplog):
    response = post(client, {"type": "x", "payload": 1})
    assert response.status_code == 503
    assert "marked failed" in response.json()["error"]
    assert Broadcast.objects.get().status == Broadcast.Status.FAILED
    assert KEY not in caplog.text


@pytest.mark.django_db(transaction=True)
def test_an_ephemeral_broadcast_has_no_row(client, keys):
    response = post(client, {"type": "x", "persist": False}, key=OTHER)
    assert response.status_code == 201 and response.json()["id"] is None
    assert not Broadcast.objects.exists()
