"""
One server process per database on the in-memory channel layer.

The in-memory layer reaches only the process it lives in. Two server processes on
it (``uvicorn --workers 2``, gunicorn workers) would each hold some of the clients,
and a broadcast published in one would never reach the other's: silent loss. So the
process whose hub starts first (its first client) takes an OS file lock named after
its database; a second one refuses its clients (``ImproperlyConfigured``, which the
consumer turns into close 1011 and an error line naming ``CHANNEL_LAYERS``), and
``publish()`` from any other process on that database (``manage.py shell``, a worker)
raises instead of reporting a broadcast sent to nobody.

The kernel drops a lock when its process exits, however it exits. Workers forked
from a parent that took the lock share it, so preloading the application in a
master process (gunicorn ``--preload``) is not detected.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from broadcast.stream.layer import is_process_local, load_layer, needs_shared_layer

_held: dict[str, int] = {}


def lock_path() -> str:
    """The lock file for this project's database."""
    db = settings.DATABASES["default"]
    identity = "|".join(str(db.get(key, "")) for key in ("ENGINE", "HOST", "PORT", "NAME"))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"django-broadcast-{digest}.lock")


def claim() -> None:
    """This process serves the hub on the in-memory layer; raise if another one does."""
    path = lock_path()
    if path in _held:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ImproperlyConfigured(
            needs_shared_layer(
                "Another server process already serves the broadcast hub for this "
                f"database (lock {path})"
            )
        ) from None
    os.set_inheritable(fd, False)
    _held[path] = fd


def claim_for_layer() -> None:
    """:func:`claim`, if this process serves the hub on the in-memory layer."""
    try:
        layer = load_layer()
    except ImproperlyConfigured:  # a bad layer setting: the system checks report it
        return
    if is_process_local(layer):
        claim()


def served_elsewhere() -> bool:
    """True when another process serves the hub on the in-memory layer for this database."""
    path = lock_path()
    if path in _held:
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
