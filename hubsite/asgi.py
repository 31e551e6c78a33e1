"""
ASGI entry point: HTTP goes to Django, WebSockets to the broadcast hub.

Run with `daphne hubsite.asgi:application` (or `manage.py runserver`, which uses
daphne because it is first in INSTALLED_APPS).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsite.settings")
# Populate the app registry before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from broadcast.routing import (  # noqa: E402
    AllowedOrigins,
    PublishGuard,
    SessionIfAuthRequired,
    websocket_urlpatterns,
)
from broadcast.stream.tuning import tune_gc  # noqa: E402

application = ProtocolTypeRouter(
    {
        # The publish API's key and length are judged before Django reads its body.
        "http": PublishGuard(django_asgi_app),
        # Not AuthMiddlewareStack: it resolves the user on every connect, a database
        # thread hop per client (docs/benchmarks.md). The consumer resolves the user
        # only for a connection with a session cookie (a revocation must find it) or
        # with BROADCAST_REQUIRE_AUTH on. AllowedOrigins is Channels' Origin check with
        # its verdict remembered (broadcast/routing.py).
        "websocket": AllowedOrigins(SessionIfAuthRequired(URLRouter(websocket_urlpatterns))),
    }
)

# Everything is imported now: take it out of the garbage collector's way, and during
# connect bursts let closed connections pace full collections (see
# broadcast/stream/tuning.py; HUB_GC_TUNING=0 keeps Python's defaults, and
# HUB_GC_YOUNG_GENERATION=7000 trades memory under churn for faster connect bursts).
if os.environ.get("HUB_GC_TUNING", "1") != "0":
    young = os.environ.get("HUB_GC_YOUNG_GENERATION")
    tune_gc(young_generation=int(young) if young else None)
