"""hubsite's ASGI application, with the constants ``HUB_CONSTANTS`` names set first."""

from hubsite.asgi import application  # sets up Django before the hub's modules import

# isort: split
from harness.constants import apply

apply()

__all__ = ["application"]
