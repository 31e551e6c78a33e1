"""The admin: composing publishes, validation errors, permissions, resend, counts."""

import json

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from broadcast.models import Broadcast, HubProcess
from tests.test_publish import Observer

pytestmark = pytest.mark.django_db(transaction=True)

ADD_URL = reverse("admin:broadcast_broadcast_add")
LIST_URL = reverse("admin:broadcast_broadcast_changelist")


def staff(username, *perms):
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


@pytest.fixture
def publisher_client(client):
    client.force_login(staff("editor", "add_broadcast", "view_broadcast"))
    return client


@pytest.fixture
def observer(redis_layer):
    instance = Observer()
    yield instance
    instance.close()


def test_saving_a_new_broadcast_publishes_it(publisher_client, observer):
    response = publisher_client.post(
        ADD_URL, {"type": "announcement", "payload": '{"text": "Deploy at 18:00"}'}
    )
    assert response.status_code == 302
    row = Broadcast.objects.get()
    assert row.status == Broadcast.Status.SENT
    assert row.created_by.username == "editor"
    (message,) = observer.take(1)
    assert message["id"] == row.seq
    assert '"payload":{"text":"Deploy at 18:00"}' in message["text"]


def test_a_broadcast_saved_with_a_topic_goes_to_that_topic(publisher_client, observer):
    publisher_client.post(ADD_URL, {"type": "news", "topic": "ops", "payload": "{}"})
    row = Broadcast.objects.get()
    assert (row.topic, row.status) == ("ops", Broadcast.Status.SENT)
    (message,) = observer.take(1)
    assert message["topic"] == "ops" and json.loads(message["text"])["topic"] == "ops"


@pytest.mark.parametrize(
    ("data", "field", "error"),
    [
        ({"type": "news", "payload": "{not json"}, "payload", "Enter a valid JSON."),
        ({"type": "bad type!", "payload": "{}"}, "type", "letters, digits"),
        ({"type": "hub.welcome", "payload": "{}"}, "type", "reserved"),
        ({"type": "news", "topic": "hub.x", "payload": "{}"}, "topic", "reserved"),
        ({"type": "news", "topic": "a b", "payload": "{}"}, "topic", "letters, digits"),
        ({"type": "news", "payload": '"' + "x" * 70_000 + '"'}, "payload", "over BROADCAST_MAX"),
    ],
)
def test_invalid_input_is_a_form_error_not_a_500(publisher_client, data, field, error):
    response = publisher_client.post(ADD_URL, data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert error in " ".join(errors[field])
    assert not Broadcast.objects.exists()


def test_a_staff_user_without_the_add_permission_cannot_publish(client):
    client.force_login(staff("viewer", "view_broadcast"))
    assert client.get(ADD_URL).status_code == 403
    assert client.post(ADD_URL, {"type": "news", "payload": "{}"}).status_code == 403
    assert not Broadcast.objects.exists()


def test_sent_broadcasts_are_read_only(publisher_client, observer):
    publisher_client.post(ADD_URL, {"type": "news", "payload": '{"n": 1}'})
    row = Broadcast.objects.get()
    url = reverse("admin:broadcast_broadcast_change", args=[row.pk])
    page = publisher_client.get(url)
    assert page.status_code == 200
    assert b'name="type"' not in page.content  # shown, not editable
    publisher_client.post(url, {"type": "changed", "payload": "{}"})
    row.refresh_from_db()
    assert row.type == "news"


def test_the_list_shows_status_and_author(publisher_client, observer):
    publisher_client.post(ADD_URL, {"type": "listed", "payload": '{"text": "<b>x</b>"}'})
    page = publisher_client.get(LIST_URL).content.decode()
    assert "listed" in page and "sent" in page and "editor" in page
    assert "<b>x</b>" not in page  # escaped


def test_the_resend_action_resends_the_selected(publisher_client, observer):
    publisher_client.post(ADD_URL, {"type": "again", "payload": "{}"})
    row = Broadcast.objects.get()
    observer.take(1)
    response = publisher_client.post(
        LIST_URL, {"action": "resend_selected", "_selected_action": [row.pk]}, follow=True
    )
    assert "Resent 1 broadcast" in response.content.decode()
    assert Broadcast.objects.count() == 2
    assert observer.take(1)[0]["id"] > row.seq


def test_the_admin_shows_live_connection_counts(admin_client):
    from django.utils import timezone

    now = timezone.now()
    HubProcess.objects.create(host="a", pid=1, started_at=now, last_heartbeat=now, current=3)
    HubProcess.objects.create(host="b", pid=2, started_at=now, last_heartbeat=now, current=4)
    old = now - timezone.timedelta(minutes=5)
    HubProcess.objects.create(host="c", pid=3, started_at=old, last_heartbeat=old, current=9)
    page = admin_client.get(reverse("admin:broadcast_hubprocess_changelist")).content.decode()
    assert 'Clients connected now: <strong id="hub-live-total">7</strong>' in page
    assert "over 2 live processes" in page
    assert "stale" in page


def test_the_add_form_starts_with_an_empty_payload_box_and_empty_means_null(
    publisher_client, observer
):
    page = publisher_client.get(ADD_URL).content.decode()
    box = page[page.index('<textarea name="payload"') :]
    assert box[box.index(">") + 1 : box.index("</textarea>")].strip() == ""
    response = publisher_client.post(ADD_URL, {"type": "ping", "payload": ""})
    assert response.status_code == 302
    assert Broadcast.objects.get().payload is None
    assert json.loads(observer.take(1)[0]["text"])["payload"] is None


def test_saving_while_the_layer_is_down_marks_the_row_failed_not_a_500(
    publisher_client, unreachable_layer, caplog
):
    response = publisher_client.post(ADD_URL, {"type": "news", "payload": '{"n": 1}'})
    assert response.status_code == 302
    row = Broadcast.objects.get()
    assert row.status == Broadcast.Status.FAILED and "Connection" in row.error
    # One WARNING line that names the row, and no traceback: the failure is expected
    # while the layer is down (found by the fault sequencer, an admin save while Redis
    # restarted: Django's robust on_commit logged the exception again, with its stack).
    assert [r.getMessage()[:29] for r in caplog.records if r.levelname != "INFO"] == [
        f"Broadcast row {row.pk} (news) failed"[:29]
    ]
    assert not [r for r in caplog.records if r.exc_info]
    listing = publisher_client.get(LIST_URL).content.decode()
    assert "failed" in listing
