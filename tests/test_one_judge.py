"""
Every input judged the same way: topic names from the connect URL as from a frame,
payloads that cannot be encoded refused wherever they come from, and the publish API
answering JSON, its key and length judged before its body is read (PublishGuard).
"""

import asyncio
import json
from urllib.parse import quote

import pytest
from channels.testing import ApplicationCommunicator
from django.core.asgi import get_asgi_application

from broadcast import publish
from broadcast.protocol import InvalidPayload, InvalidTopic
from broadcast.publishing import guard
from broadcast.routing import PublishGuard
from tests.clients import connect, frame

KEY = "k" * 16 + "-first"
# Names hub.subscribe refuses: too long, not ASCII, spaced, quoted, padded, a Cyrillic
# look-alike of user.1 (its "u" is U+0443), reserved.
REFUSED = ["x" * 300, "café", "a b", 'a"b', " user.1", "\u0443ser.1", "hub.stats"]


@pytest.fixture
def keys(settings):
    settings.BROADCAST_API_KEYS = [KEY]


@pytest.mark.django_db(transaction=True)
async def test_topics_in_the_connect_url_are_judged_as_a_subscribe_frame_judges_them(hub):
    by_url = await connect(query="?topics=" + ",".join(quote(name) for name in [*REFUSED, "ok"]))
    answer = await frame(by_url)
    errors = [await frame(by_url) for _ in REFUSED]
    by_frame = await connect()
    await by_frame.send_to(json.dumps({"type": "hub.subscribe", "topics": [*REFUSED, "ok"]}))
    frame_errors = [await frame(by_frame) for _ in REFUSED]
    frame_answer = await frame(by_frame)

    assert answer["payload"] == frame_answer["payload"] == {"topics": ["ok"], "denied": []}
    assert [error["payload"] for error in errors] == [error["payload"] for error in frame_errors]
    assert all(error["type"] == "hub.error" for error in errors)
    await by_url.disconnect()
    await by_frame.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_name_repeated_in_the_url_takes_one_place_of_the_topic_limit(hub, settings):
    settings.BROADCAST_MAX_TOPICS_PER_CLIENT = 2
    client = await connect(query="?topics=" + ",".join(["a"] * 200 + ["b"]))
    answer = await frame(client)
    assert answer["payload"] == {"topics": ["a", "b"], "denied": []}
    assert await client.receive_nothing(0.1)
    await client.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_many_bad_names_cost_ten_errors_and_a_count_not_a_frame_each(hub):
    client = await connect(query="?topics=" + ",".join(f"bad%20{n}" for n in range(50)))
    await frame(client)  # hub.subscribed
    errors = [(await frame(client))["payload"]["error"] for _ in range(11)]
    assert errors[-1] == "and 40 more invalid topic name(s)"
    assert await client.receive_nothing(0.1)
    await client.disconnect()


@pytest.mark.parametrize("bad", ["\ud800", "a\x00b", {"\udfff": 1}])
@pytest.mark.django_db
def test_a_payload_with_no_utf8_or_jsonb_form_is_an_invalid_payload(bad):
    with pytest.raises(InvalidPayload):
        publish("note", {"text": bad})


@pytest.mark.django_db
def test_an_escaped_backslash_before_u0000_is_text_not_nul():
    assert publish("note", {"text": "\\u0000"})["payload"] == {"text": "\\u0000"}


@pytest.mark.django_db
def test_a_reserved_or_malformed_topic_is_refused_by_publish_too():
    for name in REFUSED:
        with pytest.raises(InvalidTopic):
            publish("note", topic=name)


@pytest.mark.django_db(transaction=True)
def test_the_api_answers_json_400_for_a_lone_surrogate(keys, client):
    body = '{"type": "note", "payload": "\\ud800"}'  # valid JSON, no UTF-8 form
    response = client.post(
        "/broadcast/publish", body, content_type="application/json",
        headers={"Authorization": f"Bearer {KEY}"},
    )  # fmt: skip
    assert response.status_code == 400
    assert "valid Unicode" in response.json()["error"]


@pytest.mark.django_db
def test_the_api_switched_off_is_a_json_404(client, settings):
    settings.BROADCAST_API_KEYS = []
    response = client.post("/broadcast/publish", "{}", content_type="application/json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "BROADCAST_API_KEYS" in response.json()["error"]


# The guard, in front of Django's own ASGI handler -------------------------------


def guarded():
    return PublishGuard(get_asgi_application())


def request(headers, method="POST", path="/broadcast/publish"):
    return {
        "type": "http", "http_version": "1.1", "method": method, "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
        "headers": [(name.encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip


async def answer(communicator):
    start = await communicator.receive_output(2)
    body = await communicator.receive_output(2)
    return start["status"], dict(start["headers"]), json.loads(body["body"])


@pytest.mark.django_db(transaction=True)
async def test_a_wrong_key_gets_401_before_a_byte_of_the_body_is_read(keys):
    communicator = ApplicationCommunicator(
        guarded(), request({"authorization": "Bearer wrong", "content-length": "67108864"})
    )
    # No body is ever sent: the answer cannot have waited for it.
    status, headers, body = await answer(communicator)
    assert status == 401
    assert headers[b"www-authenticate"] == b'Bearer realm="broadcast"'
    assert "Authorization" in body["error"]
    await communicator.wait(1)


@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
@pytest.mark.django_db(transaction=True)
async def test_another_method_gets_405_before_the_body(keys, method):
    headers = {"content-length": str(10 * 2**30)}  # 10 GiB announced, none sent
    communicator = ApplicationCommunicator(guarded(), request(headers, method=method))
    status, headers, body = await answer(communicator)
    assert (status, headers[b"allow"]) == (405, b"POST")
    await communicator.wait(1)


@pytest.mark.django_db(transaction=True)
async def test_with_the_api_off_a_post_gets_a_json_404_before_the_body(settings):
    settings.BROADCAST_API_KEYS = []
    communicator = ApplicationCommunicator(guarded(), request({"content-length": "1000000"}))
    status, _, body = await answer(communicator)
    assert status == 404 and "BROADCAST_API_KEYS" in body["error"]
    await communicator.wait(1)


@pytest.mark.django_db(transaction=True)
async def test_a_declared_length_over_the_limit_gets_413_before_the_body(keys):
    headers = {"authorization": f"Bearer {KEY}", "content-length": str(200 * 2**20)}
    communicator = ApplicationCommunicator(guarded(), request(headers))
    status, _, body = await answer(communicator)
    assert status == 413
    assert "over" in body["error"]
    await communicator.wait(1)


@pytest.mark.django_db(transaction=True)
async def test_a_body_that_grows_past_the_limit_unannounced_gets_413(keys):
    communicator = ApplicationCommunicator(guarded(), request({"authorization": f"Bearer {KEY}"}))
    chunk = b"x" * 65536
    for _ in range(8):  # chunked, no Content-Length: 512 KiB, over the 257 KiB limit
        await communicator.send_input({"type": "http.request", "body": chunk, "more_body": True})
    status, _, _ = await answer(communicator)
    assert status == 413
    await communicator.wait(1)


@pytest.mark.django_db(transaction=True)
async def test_a_body_that_stalls_gets_408_after_the_read_deadline(keys, monkeypatch):
    monkeypatch.setattr(guard, "BODY_READ_SECONDS", 0.3)
    headers = {"authorization": f"Bearer {KEY}", "content-length": "100"}
    communicator = ApplicationCommunicator(guarded(), request(headers))
    await communicator.send_input({"type": "http.request", "body": b"{", "more_body": True})
    started = asyncio.get_running_loop().time()
    status, _, body = await answer(communicator)
    assert status == 408
    assert asyncio.get_running_loop().time() - started < 2
    await communicator.wait(1)


async def respond(communicator):
    start = await communicator.receive_output(10)
    body = await communicator.receive_output(10)
    return start["status"], json.loads(body["body"])


@pytest.mark.django_db(transaction=True)
async def test_a_good_request_passes_the_guard_and_is_published(keys, hub):
    listener = await connect()
    body = json.dumps({"type": "deploy", "payload": {"v": 1}}).encode()
    headers = {
        "host": "testserver", "authorization": f"Bearer {KEY}",
        "content-type": "application/json", "content-length": str(len(body)),
    }  # fmt: skip
    communicator = ApplicationCommunicator(guarded(), request(headers))
    await communicator.send_input({"type": "http.request", "body": body[:5], "more_body": True})
    await communicator.send_input({"type": "http.request", "body": body[5:]})
    status, envelope = await respond(communicator)
    assert status == 201
    assert (await frame(listener))["id"] == envelope["id"]
    await listener.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_other_requests_pass_the_guard_untouched(keys):
    communicator = ApplicationCommunicator(
        guarded(), request({"host": "testserver"}, method="GET", path="/healthz")
    )
    await communicator.send_input({"type": "http.request", "body": b""})
    status, body = await respond(communicator)
    assert status == 200 and body["database"]["ok"] is True


# The deadline (PostgreSQL's statement_timeout; on SQLite its busy timeout) ----------


@pytest.mark.django_db(transaction=True)
def test_a_deadline_inside_the_callers_transaction_leaves_its_timeout_as_it_was():
    from django.db import connection, transaction

    from broadcast.publishing.deadline import database_deadline

    postgres = connection.vendor == "postgresql"
    with transaction.atomic():
        if postgres:
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL statement_timeout = '30s'")
        publish("inside", 1)
        if postgres:
            with connection.cursor() as cursor:
                cursor.execute("SHOW statement_timeout")
                assert cursor.fetchone()[0] == "30s"
    if postgres:  # and each statement of a step is bounded
        from django.db import OperationalError

        with (
            pytest.raises(OperationalError, match="statement timeout"),
            database_deadline(0.2),
            connection.cursor() as cursor,
        ):
            cursor.execute("SELECT pg_sleep(2)")
