"""The demo page, its live-total endpoint, and the admin dashboard (Django's test client)."""

import datetime as dt

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from broadcast import publish
from broadcast.dashboard import connection_series, svg_chart
from broadcast.models import Broadcast, ConnectionSample, HubProcess

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def test_the_page_lists_recent_broadcasts_escaped_and_resumes_from_the_newest(client):
    first = publish("news", {"text": "hello"})
    last = publish("news", {"html": HOSTILE})
    page = client.get("/").content.decode()
    assert "&lt;script&gt;alert(" in page
    assert "<script>alert(" not in page and "<img src=x" not in page
    assert page.index(f'data-id="{last["id"]}"') < page.index(f'data-id="{first["id"]}"')
    assert f'"lastId": {last["id"]}' in page
    assert "/static/broadcast/broadcast.js" in page


def test_only_users_who_may_publish_see_the_compose_link(client):
    add_url = reverse("admin:broadcast_broadcast_add")
    assert add_url not in client.get("/").content.decode()
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert add_url not in client.get("/").content.decode()
    staff.user_permissions.add(Permission.objects.get(codename="add_broadcast"))
    client.force_login(User.objects.get(pk=staff.pk))
    assert add_url in client.get("/").content.decode()


def test_the_live_total_counts_live_processes_only(client):
    now = timezone.now()
    HubProcess.objects.create(host="a", pid=1, started_at=now, last_heartbeat=now, current=2)
    old = now - dt.timedelta(hours=1)
    HubProcess.objects.create(host="b", pid=2, started_at=old, last_heartbeat=old, current=5)
    response = client.get("/live-total/")
    assert response.json() == {"live_total": 2}
    assert "no-cache" in response["Cache-Control"]


def _process(host, pid, now):
    return HubProcess.objects.create(host=host, pid=pid, started_at=now, last_heartbeat=now)


def test_the_chart_sums_each_processs_highest_sample_per_interval():
    now = timezone.now().replace(microsecond=0)
    a, b = _process("a", 1, now), _process("b", 2, now)
    minute = dt.timedelta(minutes=1)
    for process, ago, current in [
        (a, 10.1, 3), (a, 10.5, 7), (b, 10.2, 4),  # one interval: 7 + 4
        (a, 2.5, 1),  # another interval: 1
        (a, 90, 100),  # outside the hour
    ]:  # fmt: skip
        ConnectionSample.objects.create(
            process=process, taken_at=now - ago * minute, current=current
        )
    series = connection_series("hour", dt.timedelta(hours=1), 60, now)
    assert len(series.values) == 60
    assert [v for v in series.values if v is not None] == [11, 1]
    assert series.values[-3] == 1 and series.values[-11] == 11
    assert series.peak == 11
    svg = svg_chart(series)
    assert svg.startswith("<svg") and "<polyline" not in svg and svg.count("<circle") == 2


def test_the_dashboard_shows_totals_charts_and_escaped_recent_broadcasts(admin_client):
    now = timezone.now()
    process = _process("web-1", 10, now)
    HubProcess.objects.filter(pk=process.pk).update(current=5)
    for ago in range(5):
        ConnectionSample.objects.create(
            process=process, taken_at=now - dt.timedelta(minutes=ago), current=ago
        )
    publish("alert", {"html": HOSTILE})
    page = admin_client.get(reverse("admin:broadcast_hubprocess_changelist")).content.decode()
    assert 'Clients connected now: <strong id="hub-live-total">5</strong>' in page
    assert "web-1:10" in page
    assert page.count('<svg class="hub-chart"') == 2
    assert "<polyline" in page
    assert "&lt;script&gt;" in page and "<script>alert(" not in page
    assert '<td class="status-sent">sent</td>' in page
    assert 'id="hub-topics"' not in page  # no process reports a topic


def test_the_dashboard_adds_up_each_topics_subscribers_over_live_processes(admin_client):
    now = timezone.now()
    for pid, topics in ((1, {"ops": 2, "user.7": 1}), (2, {"ops": 3})):
        process = _process("web", pid, now)
        HubProcess.objects.filter(pk=process.pk).update(topics=topics)
    stale = _process("old", 3, now - dt.timedelta(hours=1))
    HubProcess.objects.filter(pk=stale.pk).update(topics={"ops": 50})
    page = admin_client.get(reverse("admin:broadcast_hubprocess_changelist")).content.decode()
    assert "<tr><td>ops</td><td>5</td>\n        <td>web:1: 2, web:2: 3</td></tr>" in page
    assert "<tr><td>user.7</td><td>1</td>\n        <td>web:1: 1</td></tr>" in page


def test_prunehub_keeps_what_is_recent_and_resumable(settings):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    now = timezone.now()
    old = now - dt.timedelta(days=40)
    keep = publish("news", {"n": 1})
    gone = Broadcast.objects.create(type="news", payload={"n": 0})
    Broadcast.objects.filter(pk=gone.pk).update(created_at=old)
    dead = HubProcess.objects.create(host="x", pid=1, started_at=old, last_heartbeat=old)
    ConnectionSample.objects.create(process=dead, taken_at=old, current=1)
    live = _process("y", 2, now)
    ConnectionSample.objects.create(process=live, taken_at=old, current=1)
    ConnectionSample.objects.create(process=live, taken_at=now, current=2)

    from io import StringIO

    out = StringIO()
    call_command("prunehub", "--dry-run", stdout=out)
    assert "Would delete 1 broadcast(s)" in out.getvalue()
    assert Broadcast.objects.count() == 2
    call_command("prunehub", stdout=out)
    assert list(Broadcast.objects.values_list("seq", flat=True)) == [keep["id"]]
    assert list(HubProcess.objects.values_list("host", flat=True)) == ["y"]
    assert list(ConnectionSample.objects.values_list("current", flat=True)) == [2]
    settings.BROADCAST_HISTORY_TTL = 3 * 86400
    with pytest.raises(CommandError, match="BROADCAST_HISTORY_TTL"):
        call_command("prunehub", "--days", "1")


def test_with_require_auth_anonymous_visitors_see_no_broadcasts_on_the_page(client, settings):
    publish("news", {"text": "members only"})
    settings.BROADCAST_REQUIRE_AUTH = True
    assert "members only" not in client.get("/").content.decode()
    client.force_login(User.objects.create_user("member", password="pw"))
    assert "members only" in client.get("/").content.decode()


def test_the_dashboard_shows_payloads_only_to_users_who_may_view_broadcasts(client):
    publish("news", {"text": "internal payload"})
    operator = User.objects.create_user("operator", password="pw", is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="view_hubprocess"))
    client.force_login(operator)
    url = reverse("admin:broadcast_hubprocess_changelist")
    page = client.get(url).content.decode()
    assert "Broadcast hub" in page and "internal payload" not in page
    operator.user_permissions.add(Permission.objects.get(codename="view_broadcast"))
    client.force_login(User.objects.get(pk=operator.pk))
    assert "internal payload" in client.get(url).content.decode()
