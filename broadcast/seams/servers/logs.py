"""
What the servers' own log lines show of a request's query string: uvicorn writes it
whole, on its ``uvicorn.access`` logger for HTTP and on ``uvicorn.error`` for each
WebSocket it accepts or refuses, so a connect token (``?token=``), or an API key a
client wrongly puts in a URL (``?key=``), would reach log files. A filter on those two
loggers (public names, set up before the application loads) replaces their values.

daphne logs WebSocket paths without their query; its HTTP access lines, written to a
stream of its own, keep it: run it with ``--access-log /dev/null`` behind a proxy
that logs without queries (docs/security.md).
"""

from __future__ import annotations

import logging
import re

SECRET_PARAMETER = re.compile(r"([?&](?:token|key|api_key)=)[^&\s\"']+", re.IGNORECASE)
LOGGERS = ("uvicorn.access", "uvicorn.error")
REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    """Rewrites a record's string arguments (and message) with secret values replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(arg, str) for arg in args):
            record.args = tuple(
                SECRET_PARAMETER.sub(rf"\1{REDACTED}", arg) if isinstance(arg, str) else arg
                for arg in args
            )
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = SECRET_PARAMETER.sub(rf"\1{REDACTED}", record.msg)
        return True


def install() -> None:
    """Filter the servers' loggers, once a process."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactSecrets) for existing in logger.filters):
            logger.addFilter(RedactSecrets())
