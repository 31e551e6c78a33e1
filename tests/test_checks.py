import pytest
from django.core.checks import run_checks

from broadcast.checks import check_settings
from broadcast.conf import REMOVED


def ids(errors):
    return [error.id for error in errors]


def test_default_settings_pass():
    assert check_settings() == []


@pytest.mark.parametrize(
    ("name", "value", "error_id"),
    [
        ("BROADCAST_GROUP", "has space", "broadcast.E001"),
        ("BROADCAST_GROUP", "", "broadcast.E001"),
        ("BROADCAST_CHANNEL_LAYER", "missing", "broadcast.E002"),
        ("BROADCAST_MAX_MESSAGE_BYTES", 0, "broadcast.E003"),
        ("BROADCAST_MAX_MESSAGE_BYTES", "64k", "broadcast.E003"),
        ("BROADCAST_MAX_PENDING_BYTES", -1, "broadcast.E004"),
        ("BROADCAST_HEARTBEAT_SECONDS", 0, "broadcast.E005"),
        ("BROADCAST_REQUIRE_AUTH", "yes", "broadcast.E008"),
        ("BROADCAST_MAX_CONNECTIONS", 0, "broadcast.E013"),
        ("BROADCAST_RETENTION_DAYS", -1, "broadcast.E016"),
        ("BROADCAST_METRICS_ENABLED", "yes", "broadcast.E017"),
        ("BROADCAST_HEALTHZ_ENABLED", 1, "broadcast.E018"),
        ("BROADCAST_METRICS_TOKEN", "", "broadcast.E019"),
        ("BROADCAST_RETENTION_DAYS", 0.5, "broadcast.E020"),  # under the 1-day history TTL
        ("BROADCAST_MAX_RELAY_BACKLOG", 0, "broadcast.E021"),
        ("BROADCAST_FAST_PATH", "no", "broadcast.E023"),
        ("BROADCAST_MAX_TOPICS_PER_CLIENT", 0, "broadcast.E025"),
        ("BROADCAST_TOPIC_AUTHORIZER", "authorize", "broadcast.E026"),
        ("BROADCAST_TOPIC_AUTHORIZER", "myapp.nowhere.authorize", "broadcast.E028"),
        ("BROADCAST_API_KEYS", "one-long-key-on-its-own", "broadcast.E027"),
        ("BROADCAST_API_KEYS", ["short"], "broadcast.E027"),
    ],
)
def test_bad_values_are_reported(settings, name, value, error_id):
    setattr(settings, name, value)
    errors = check_settings()
    assert ids(errors) == [error_id]
    if name == "BROADCAST_API_KEYS":  # a secret: described, never shown
        assert repr(value) not in errors[0].msg and "not shown" in errors[0].msg
    else:
        assert repr(value) in errors[0].msg


@pytest.mark.django_db  # Django 6's check command also runs the database checks
def test_checks_run_with_manage_py_check(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.BROADCAST_HEARTBEAT_SECONDS = -5
    with pytest.raises(SystemCheckError, match="broadcast.E005"):
        call_command("check")


class UnknownLayer:
    """A channel layer the send lock knows nothing about (like a third-party one)."""

    def __init__(self, **kwargs):
        pass


def test_a_layer_the_send_lock_cannot_share_is_warned_about(settings):
    from channels.layers import channel_layers

    from broadcast.checks import check_send_lock

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "tests.test_checks.UnknownLayer"}}
    channel_layers.backends.clear()
    assert [warning.id for warning in check_send_lock()] == ["broadcast.W001"]


def test_redis_layers_need_no_warning(settings, redis_url):
    from channels.layers import channel_layers

    from broadcast.checks import check_send_lock

    for backend in [
        "channels_redis.core.RedisChannelLayer",
        "channels_redis.pubsub.RedisPubSubChannelLayer",
    ]:
        settings.CHANNEL_LAYERS = {
            "default": {"BACKEND": backend, "CONFIG": {"hosts": [redis_url]}}
        }
        channel_layers.backends.clear()
        assert check_send_lock() == []


def test_a_layer_backend_missing_its_package_is_an_error_naming_the_extra(settings):
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.absent.RedisChannelLayer"}}
    channel_layers.backends.clear()
    try:
        errors = check_settings()
    finally:
        channel_layers.backends.clear()
    assert ids(errors) == ["broadcast.E024"]
    assert errors[0].msg.startswith(
        "CHANNEL_LAYERS['default']['BACKEND'] is 'channels_redis.absent.RedisChannelLayer', "
        "which cannot be imported"
    )
    assert errors[0].msg.endswith(": pip install 'django-broadcast-hub[redis]'.")


def test_no_channel_layer_points_to_the_quick_start(settings):
    settings.CHANNEL_LAYERS = {}
    (error,) = check_settings()
    assert error.id == "broadcast.E002"
    assert "docs/quickstart.md" in error.hint


def deploy_ids():
    from broadcast.checks import check_deployment

    return ids(check_deployment())


def test_check_deploy_names_what_is_public_and_the_one_process_layer(settings):
    settings.ROOT_URLCONF = "hubsite.urls"  # includes broadcast.urls
    assert deploy_ids() == ["broadcast.W002", "broadcast.W003", "broadcast.W004"]
    settings.BROADCAST_METRICS_TOKEN = "scrape-token"
    settings.BROADCAST_HEALTHZ_ENABLED = False
    assert deploy_ids() == ["broadcast.W004"]


def test_endpoints_a_project_does_not_route_are_not_warned_about(settings):
    settings.ROOT_URLCONF = "tests.urls_without_endpoints"
    assert deploy_ids() == ["broadcast.W004"]


def test_a_shared_layer_passes_check_deploy(settings, redis_url):
    from channels.layers import channel_layers

    settings.ROOT_URLCONF = "tests.urls_without_endpoints"
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url]},
        }
    }
    channel_layers.backends.clear()
    try:
        assert deploy_ids() == []
    finally:
        channel_layers.backends.clear()


@pytest.mark.parametrize("name", sorted(REMOVED))
def test_a_removed_setting_still_set_is_a_warning_naming_what_replaced_it(settings, name):
    setattr(settings, name, 5)
    warnings = [m for m in run_checks() if m.id == "broadcast.W005"]
    assert [m.msg for m in warnings] == [
        f"{name} is no longer a setting and is ignored: {REMOVED[name]}."
    ]


def test_no_removed_setting_set_no_warning():
    assert [m for m in run_checks() if m.id == "broadcast.W005"] == []
