"""WSGI entry point, for HTTP-only deployments of the admin (no WebSockets)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsite.settings")

application = get_wsgi_application()
