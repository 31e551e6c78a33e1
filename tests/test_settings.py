"""hubsite settings from the environment, each read by a fresh interpreter."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json
from django.conf import settings
import django
django.setup()
db = settings.DATABASES["default"]
print(json.dumps({
    "debug": settings.DEBUG,
    "secret": settings.SECRET_KEY,
    "hosts": settings.ALLOWED_HOSTS,
    "layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
    "layer_hosts": settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts"),
    "engine": db["ENGINE"],
    "name": str(db["NAME"]),
}))
"""

UNSET = (
    "DJANGO_SECRET_KEY",
    "DJANGO_DEBUG",
    "DJANGO_ALLOWED_HOSTS",
    "REDIS_URL",
    "REDIS_LAYER",
    "DATABASE_URL",
)


def load(**env):
    clean = {k: v for k, v in os.environ.items() if k not in UNSET}
    clean.update(DJANGO_SETTINGS_MODULE="hubsite.settings", **env)
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True
    )
    return result


def test_the_embedded_default_is_sqlite_and_the_in_memory_layer():
    settings = json.loads(load().stdout)
    assert settings["debug"] is True
    assert settings["engine"] == "django.db.backends.sqlite3"
    assert settings["name"].endswith("db.sqlite3")
    assert settings["layer"] == "channels.layers.InMemoryChannelLayer"
    assert settings["hosts"] == ["127.0.0.1", "localhost", "[::1]"]


def test_redis_url_switches_the_hub_to_channels_redis_with_safe_timeouts():
    settings = json.loads(load(REDIS_URL="redis://127.0.0.1:6379/3").stdout)
    assert settings["layer"] == "channels_redis.core.RedisChannelLayer"
    (host,) = settings["layer_hosts"]
    assert host["address"] == "redis://127.0.0.1:6379/3"
    assert host["socket_timeout"] > 5  # above the layer's 5 s blocking pop
    assert host["max_connections"] > 100


def test_database_url_switches_the_database():
    settings = json.loads(load(DATABASE_URL="postgres://u:p@db.example:5432/hub").stdout)
    assert settings["engine"] == "django.db.backends.postgresql"
    assert settings["name"] == "hub"


def test_debug_off_requires_a_secret_key():
    result = load(DJANGO_DEBUG="0")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off" in result.stderr


def test_production_settings_come_from_the_environment():
    settings = json.loads(
        load(
            DJANGO_DEBUG="false", DJANGO_SECRET_KEY="s" * 50, DJANGO_ALLOWED_HOSTS="hub.example"
        ).stdout
    )
    assert settings["debug"] is False
    assert settings["secret"] == "s" * 50
    assert settings["hosts"] == ["hub.example"]


def test_a_bad_boolean_is_a_clear_error():
    result = load(DJANGO_DEBUG="maybe")
    assert "DJANGO_DEBUG must be a boolean" in result.stderr


def check_deploy(**environment):
    clean = {k: v for k, v in os.environ.items() if k not in UNSET}
    clean.update(
        DJANGO_SETTINGS_MODULE="hubsite.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="a-long-random-production-secret-key-" + "q7Zx" * 10,
        DJANGO_ALLOWED_HOSTS="hub.example.com",
        **environment,
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=clean, capture_output=True, text=True,
    )  # fmt: skip


def test_check_deploy_passes_for_the_documented_production_settings():
    result = check_deploy(
        REDIS_URL="redis://127.0.0.1:6379/0", BROADCAST_METRICS_TOKEN="a-scrape-token"
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_names_public_metrics_and_the_one_process_layer():
    result = check_deploy()
    assert result.returncode == 1
    assert "(broadcast.W002) /metrics is served to anyone" in result.stderr
    assert "(broadcast.W004) The in-memory channel layer serves one server process" in (
        result.stderr
    )
    # hubsite's documented proxy serves /healthz to the load balancer only.
    assert "broadcast.W003" not in result.stderr


def test_redis_layer_pubsub_selects_channels_redis_pubsub():
    settings = json.loads(load(REDIS_URL="redis://127.0.0.1:6379/3", REDIS_LAYER="pubsub").stdout)
    assert settings["layer"] == "channels_redis.pubsub.RedisPubSubChannelLayer"


def test_an_unknown_redis_layer_is_a_clear_error():
    result = load(REDIS_URL="redis://127.0.0.1:6379/3", REDIS_LAYER="cluster")
    assert "REDIS_LAYER must be core or pubsub, got 'cluster'" in result.stderr


def test_app_settings_come_from_the_environment_with_their_types():
    probe = (
        "import django, json; django.setup(); from broadcast.conf import conf;"
        "print(json.dumps([conf.BROADCAST_METRICS_TOKEN, conf.BROADCAST_METRICS_ENABLED,"
        " conf.BROADCAST_RETENTION_DAYS, conf.BROADCAST_REQUIRE_AUTH,"
        " conf.BROADCAST_MAX_RELAY_BACKLOG, conf.BROADCAST_API_KEYS]))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in UNSET}
    clean.update(
        DJANGO_SETTINGS_MODULE="hubsite.settings",
        BROADCAST_METRICS_TOKEN="t0ken",
        BROADCAST_METRICS_ENABLED="false",
        BROADCAST_RETENTION_DAYS="7.5",
        BROADCAST_REQUIRE_AUTH="1",
        BROADCAST_MAX_RELAY_BACKLOG="off",
        BROADCAST_API_KEYS="0123456789abcdef, fedcba9876543210",
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=clean, capture_output=True, text=True
    )
    assert json.loads(result.stdout) == [
        "t0ken",
        False,
        7.5,
        True,
        None,
        ["0123456789abcdef", "fedcba9876543210"],
    ], result.stderr
    bad = load(BROADCAST_METRICS_ENABLED="maybe")
    assert bad.returncode != 0
    assert "BROADCAST_METRICS_ENABLED must be 1/0 or true/false, got 'maybe'" in bad.stderr
    bad = load(BROADCAST_MAX_CONNECTIONS="lots")
    assert "BROADCAST_MAX_CONNECTIONS must be an integer, got 'lots'" in bad.stderr
