"""
A broadcast the layer lost with nothing after it (a pub/sub process not yet subscribed
again after Redis restarted) leaves no gap to notice: on each heartbeat, a relay that
has waited on an empty layer for LOST_AFTER_SECONDS asks the database for what was
sent before then and never reached it (the look), and sends it
(:meth:`broadcast.stream.position.Stream.send_lost`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from broadcast.history import newest_sent_before

# A relay delivers within milliseconds: one idle for this long, while a broadcast sent
# this long ago never reached it, will not get that broadcast from the layer.
LOST_AFTER_SECONDS = 1.0


@dataclass(frozen=True)
class LostLook:
    """A heartbeat's question to the database for broadcasts an idle relay never got."""

    idle_since: float  # the relay's when asked: an answer is used only if it still is
    after_id: int
    before: datetime

    def newest(self) -> int:
        """The newest id after ``after_id`` sent before ``before``, 0 if none; blocking."""
        return newest_sent_before(self.after_id, self.before)


def look(idle_since: float | None, position: int) -> LostLook | None:
    """What to ask the database, for a relay idle since ``idle_since``; None if not long."""
    if idle_since is None or time.monotonic() - idle_since < LOST_AFTER_SECONDS:
        return None
    before = timezone.now() - timedelta(seconds=LOST_AFTER_SECONDS)
    return LostLook(idle_since, position, before)
