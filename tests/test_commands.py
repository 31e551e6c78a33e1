"""manage.py broadcast and hubstatus, called as a user calls them."""

import io
import json

import pytest
from channels.layers import channel_layers
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from broadcast.models import Broadcast, HubProcess
from tests.conftest import redis_layers
from tests.test_publish import Observer

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args, stdin=None, monkeypatch=None):
    out, err = io.StringIO(), io.StringIO()
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    call_command("broadcast", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def observer(redis_layer):
    instance = Observer()
    yield instance
    instance.close()


def test_it_refuses_the_in_memory_layer_and_names_the_setting_to_change():
    with pytest.raises(CommandError) as refused:
        run("news", "{}")
    message = str(refused.value)
    assert "in-memory channel layer reaches this process only" in message
    assert "Set CHANNEL_LAYERS['default'] to channels_redis.core.RedisChannelLayer" in message
    assert "hubsite" not in message  # the app names no project
    assert "\n" not in message


def test_outside_hubsite_the_refusal_speaks_of_channel_layers_only(monkeypatch, settings):
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mysite.settings")
    settings.SETTINGS_MODULE = "mysite.settings"
    with pytest.raises(CommandError, match=r"Set CHANNEL_LAYERS\['default'\]") as refused:
        run("news", "{}")
    assert "REDIS_URL" not in str(refused.value)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["news", "{not json"], "Invalid JSON in the payload argument"),
        (["bad type!", "{}"], "type"),
    ],
)
def test_bad_input_is_judged_before_the_layer(args, error):
    """On the in-memory layer too, a typo gets its own error, not the layer's."""
    with pytest.raises(CommandError, match=error) as refused:
        run(*args)
    assert "channel layer" not in str(refused.value)


def test_a_layer_backend_that_cannot_be_imported_is_one_line(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_nowhere.core.Layer"}}
    channel_layers.backends.clear()
    try:
        with pytest.raises(CommandError) as refused:
            run("news", "{}")
    finally:
        channel_layers.backends.clear()
    assert str(refused.value) == (
        "CHANNEL_LAYERS['default']['BACKEND'] is 'channels_nowhere.core.Layer', which cannot "
        "be imported (No module named 'channels_nowhere'): install it."
    )


def test_it_publishes_and_prints_the_id(observer):
    out, _ = run("announcement", '{"text": "hi"}')
    row = Broadcast.objects.get()
    assert out == f"Sent broadcast id={row.seq} type='announcement'.\n"
    assert json.loads(observer.take(1)[0]["text"])["payload"] == {"text": "hi"}


def test_it_publishes_to_a_topic(observer):
    out, _ = run("deploy", '{"v": 2}', "--topic", "ops")
    row = Broadcast.objects.get()
    assert out == f"Sent broadcast id={row.seq} type='deploy' topic='ops'.\n"
    assert observer.take(1)[0]["topic"] == "ops"


def test_hubstatus_topics_counts_subscribers_per_process_and_in_total():
    now = timezone.now()
    for pid, topics in ((1, {"ops": 2, "user.7": 1}), (2, {"ops": 3})):
        HubProcess.objects.create(
            host="web", pid=pid, started_at=now, last_heartbeat=now, current=3, topics=topics
        )
    out = io.StringIO()
    call_command("hubstatus", "--topics", stdout=out)
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert ["ops", "5", "3", "2"] in lines or ["ops", "5", "2", "3"] in lines
    assert any(line[:2] == ["user.7", "1"] for line in lines)


def test_the_payload_defaults_to_null(observer):
    run("ping")
    assert Broadcast.objects.get().payload is None


def test_the_payload_can_come_from_a_file(observer, tmp_path):
    path = tmp_path / "payload.json"
    path.write_text('{"from": "file"}', encoding="utf-8")
    run("news", "--file", str(path))
    assert Broadcast.objects.get().payload == {"from": "file"}


def test_the_payload_can_come_from_stdin(observer, monkeypatch):
    run("news", "-", stdin="[1, 2, 3]", monkeypatch=monkeypatch)
    assert Broadcast.objects.get().payload == [1, 2, 3]


def test_no_persist_sends_without_a_row(observer):
    out, _ = run("typing", '{"who": "ada"}', "--no-persist")
    assert out == "Sent ephemeral 'typing' broadcast.\n"
    assert not Broadcast.objects.exists()
    assert observer.take(1)[0]["id"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["news", "{oops"], r"Invalid JSON in the payload argument: Expecting property name"),
        (["bad type", "{}"], r"Broadcast type must be 1-64 characters.*'bad type'"),
        (["news", "{}", "--topic", "hub.x"], r"Topics starting with 'hub.' are reserved"),
        (["hub.welcome", "{}"], r"reserved for the hub's control frames"),
        (["news", json.dumps("x" * 70_000)], r"over BROADCAST_MAX_MESSAGE_BYTES \(65536\)"),
        (["news", "--file", "/nonexistent/payload.json"], r"Cannot read --file .*No such file"),
        (["news", "{}", "--file", "x.json"], r"either as an argument or with --file"),
        ([], r"Give a broadcast TYPE"),
        (["--resend", "999"], r"No Broadcast row 999"),
    ],
)
def test_bad_input_is_a_one_line_error(redis_layer, args, message):
    with pytest.raises(CommandError, match=message) as info:
        run(*args)
    assert "\n" not in str(info.value)
    assert not Broadcast.objects.exists()


def test_an_unreachable_redis_is_a_one_line_error_and_a_failed_row(unreachable_layer):
    with pytest.raises(CommandError, match=r"could not be sent and is marked failed: Connection"):
        run("news", "{}")
    assert Broadcast.objects.get().status == Broadcast.Status.FAILED


def test_resend_failed_retries_every_failed_row(settings, redis_url):
    settings.CHANNEL_LAYERS = redis_layers("redis://127.0.0.1:1/0")
    channel_layers.backends.clear()
    for n in range(2):
        with pytest.raises(CommandError):
            run("news", json.dumps({"n": n}))
    settings.CHANNEL_LAYERS = redis_layers(redis_url)
    channel_layers.backends.clear()
    observer = Observer()
    out, _ = run("--resend-failed")
    assert "[2/2]" in out and "Resent 2 broadcast(s)." in out
    assert set(Broadcast.objects.values_list("status", flat=True)) == {"sent"}
    assert [json.loads(m["text"])["payload"] for m in observer.take(2)] == [{"n": 0}, {"n": 1}]
    observer.close()


def test_hubstatus_prints_each_process_and_the_live_total():
    now = timezone.now()
    HubProcess.objects.create(
        host="web1", pid=10, started_at=now, last_heartbeat=now, current=5, peak=7
    )
    HubProcess.objects.create(
        host="web2", pid=11, started_at=now, last_heartbeat=now, current=2, peak=2
    )
    stale = now - timezone.timedelta(minutes=1)
    HubProcess.objects.create(
        host="web3", pid=12, started_at=stale, last_heartbeat=stale, current=8
    )
    out = io.StringIO()
    call_command("hubstatus", stdout=out)
    lines = out.getvalue().splitlines()
    assert any(line.startswith("web1:10") and " live " in line for line in lines)
    assert any(line.startswith("web3:12") and " stale " in line for line in lines)
    assert lines[-1] == "Live total: 7 client(s) over 2 live process(es)."
