"""
The app's log lines in a project that configures no logging for them.

Django's default ``LOGGING`` handles the ``django`` logger only; without this, the
``broadcast`` logger's INFO lines (every publish, relay restarts) would vanish and its
warnings would reach stderr bare. Like Django for its own logger, the app then prints
its lines to stderr; a project that configures the ``broadcast`` logger, or a root
handler, keeps full control.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def install_default_handler(name: str = "broadcast") -> bool:
    """Print ``name``'s INFO lines to stderr unless logging already routes them somewhere."""
    logger = logging.getLogger(name)
    if logger.handlers or logging.getLogger().handlers or not logger.propagate:
        return False
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    # The root has no handler, so nothing above would print them twice.
    return True
