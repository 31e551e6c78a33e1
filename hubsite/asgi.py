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
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from channels.sessions import SessionMiddlewareStack  # noqa: E402

from broadcast.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The session is there for BROADCAST_REQUIRE_AUTH, which the consumer resolves
        # only when it is on; AuthMiddlewareStack would resolve the user on every
        # connect, a database thread hop per client (see docs/benchmarks.md).
        "websocket": AllowedHostsOriginValidator(
            SessionMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
