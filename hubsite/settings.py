"""
Settings for the hubsite project.

With no environment set this is the embedded development default: SQLite, the
in-memory channel layer, one process, DEBUG on. Production is configured entirely
from the environment (see docs/settings.md, "hubsite's environment"):

- DJANGO_SECRET_KEY, DJANGO_DEBUG, DJANGO_ALLOWED_HOSTS
- DATABASE_URL (PostgreSQL in production; any dj-database-url URL)
- REDIS_URL (switches the hub to channels-redis so several processes share it)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from broadcast.conf import from_environment

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


DEBUG = env_bool("DJANGO_DEBUG", True)

_DEV_SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))')."
        )
    SECRET_KEY = _DEV_SECRET_KEY

ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if host.strip()
]

INSTALLED_APPS = [
    # daphne first, so `runserver` serves HTTP and WebSockets through daphne.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "broadcast",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the JS client, the demo page's assets) from the app servers
    # themselves, compressed and cached; nginx may serve STATIC_ROOT instead.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "hubsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "hubsite" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "hubsite.wsgi.application"
ASGI_APPLICATION = "hubsite.asgi.application"

# SQLite is opened in IMMEDIATE mode so concurrent writers queue on the write lock
# instead of failing with "database is locked" when a read transaction upgrades.
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests use a file too: the in-memory shared-cache database Django would use
    # takes table locks that ignore the busy timeout, unlike a real deployment.
    DATABASES["default"].setdefault("TEST", {"NAME": str(BASE_DIR / "test-db.sqlite3")})

REDIS_URL = os.environ.get("REDIS_URL", "")
# core (the default) or pubsub: channels-redis's two layers; see docs/benchmarks.md.
REDIS_LAYER = os.environ.get("REDIS_LAYER", "core")
if REDIS_LAYER not in {"core", "pubsub"}:
    raise ImproperlyConfigured(f"REDIS_LAYER must be core or pubsub, got {REDIS_LAYER!r}")
# redis-py 8 defaults socket_timeout to 5 s, which kills the layer's blocking receive
# (channels_redis#422): keep it well above the 5 s pop, and lift the pool cap of 100.
_REDIS_HOST = {
    "address": REDIS_URL,
    "socket_timeout": 30,
    "socket_connect_timeout": 5,
    "max_connections": 1000,
}
# Redis Sentinel instead of one address: REDIS_SENTINELS="host:port,host:port" and
# the monitored master's name; channels-redis and the send lock follow failovers.
REDIS_SENTINELS = os.environ.get("REDIS_SENTINELS", "")
if REDIS_SENTINELS:
    if REDIS_URL:
        raise ImproperlyConfigured("Set REDIS_URL or REDIS_SENTINELS, not both.")
    try:
        _sentinels = [
            (host.rsplit(":", 1)[0], int(host.rsplit(":", 1)[1]))
            for host in REDIS_SENTINELS.split(",")
            if host.strip()
        ]
    except (IndexError, ValueError):
        raise ImproperlyConfigured(
            f"REDIS_SENTINELS must be host:port[,host:port...], got {REDIS_SENTINELS!r}"
        ) from None
    _REDIS_HOST.pop("address")
    _REDIS_HOST.update(
        sentinels=_sentinels,
        master_name=os.environ.get("REDIS_SENTINEL_MASTER", "mymaster"),
        db=int(os.environ.get("REDIS_SENTINEL_DB", "0")),
    )
    if os.environ.get("REDIS_PASSWORD"):
        _REDIS_HOST["password"] = os.environ["REDIS_PASSWORD"]
_REDIS_ENABLED = bool(REDIS_URL or REDIS_SENTINELS)
if _REDIS_ENABLED and REDIS_LAYER == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [_REDIS_HOST]},
        }
    }
elif _REDIS_ENABLED:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [_REDIS_HOST],
                # One relay channel per server process receives every broadcast, so
                # the capacity bounds a burst per process, not per client.
                "capacity": 5000,
                "expiry": 60,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 5000, "expiry": 60},
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "hubsite" / "static"]
if DEBUG:
    # WhiteNoise serves from the app directories (its finders) in DEBUG; STATIC_ROOT
    # exists only after collectstatic, and its absence is expected here.
    warnings.filterwarnings("ignore", message="No directory at", category=UserWarning)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# /healthz is public in the app; the documented proxy (docs/operations.md) lets only the
# load balancer's network reach it.
SILENCED_SYSTEM_CHECKS = ["broadcast.W003"]

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # Load balancers and Prometheus probe these over plain HTTP from inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    CSRF_TRUSTED_ORIGINS = [
        origin.strip()
        for origin in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",")
        if origin.strip()
    ]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "loggers": {
        "broadcast": {
            "handlers": ["console"],
            "level": os.environ.get("BROADCAST_LOG_LEVEL", "INFO"),
            "propagate": False,
        },
    },
}

# Every app setting (docs/settings.md) can be set from the environment by its own name;
# an unset variable leaves the app's default.
globals().update(from_environment(os.environ))
