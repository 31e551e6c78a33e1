"""
What every server seam shares: the writer interface and the once-a-process probe.

A seam module owns one library's private parts. Before the hub relies on them, its
probe checks the installed versions against the range CI proves and the attributes
it will touch; a probe that fails logs one WARNING naming the library and version,
and the hub uses the public path (the ASGI ``send``, the layer's public API).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Protocol

logger = logging.getLogger("broadcast.seams.servers")


class Writer(Protocol):
    """A direct writer: one client's connection, reached beneath the ASGI ``send``."""

    #: False for a writer that leaves every message to the ASGI send and only keeps
    #: count (daphne's public path): several frames must not be offered to it at once
    #: and then again one by one.
    writes_itself: bool

    def write(self, frame: bytes, buffered: int) -> bool:
        """
        Write a prepared frame now, or return False for the ASGI send to write the
        message (the connection is not open, or this writer never writes itself).
        ``buffered`` is ``buffered()`` as the caller has just measured it.
        """

    def buffered(self) -> int:
        """Bytes written but not yet accepted by the socket; 0 once the connection is lost."""

    def close(self, code: int, reason: str, grace: float | None = None) -> bool:
        """
        Queue a close frame behind what is buffered; False if already closing.
        ``grace``: how long the client has to answer it, where the server times
        the close handshake itself (None: the server's own default).
        """

    def abort(self) -> None:
        """Drop the TCP connection now, discarding what is buffered."""


@dataclass(frozen=True)
class Proven:
    """A distribution and the version range the fast path is proven on: [lowest, below)."""

    distribution: str
    lowest: str
    below: str

    def installed(self) -> str | None:
        try:
            return metadata.version(self.distribution)
        except metadata.PackageNotFoundError:
            return None

    def admits(self, version: str) -> bool:
        return _release(self.lowest) <= _release(version) < _release(self.below)


@dataclass(frozen=True)
class Probed:
    """A probe's answer: whether the fast path is safe, and if not, why."""

    safe: bool
    reason: str = ""


def probe(seam: str, proven: Iterable[Proven], missing: Callable[[], Iterable[str]]) -> Probed:
    """
    Whether ``seam``'s fast path may run: every distribution within its proven range,
    and ``missing()`` (the private names the seam touches that are absent) empty.
    Logs one WARNING when it may not.
    """
    for each in proven:
        version = each.installed()
        if version is None:
            return _refuse(seam, f"{each.distribution} is not installed")
        if not each.admits(version):
            return _refuse(
                seam,
                f"{each.distribution} {version} is outside the proven range "
                f">={each.lowest},<{each.below}",
            )
    try:
        absent = sorted(missing())
    except Exception as exc:  # a module moved: the same answer as a missing name
        absent = [f"{type(exc).__name__}: {exc}"]
    if absent:
        return _refuse(seam, "missing " + ", ".join(absent))
    return Probed(True)


def _refuse(seam: str, reason: str) -> Probed:
    logger.warning("%s fast path off (%s); using the public path", seam, reason)
    return Probed(False, reason)


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string ("4.2.3rc1" -> (4, 2, 3)), for ranges."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else (0,)
