"""
The relay's end of the channel layer: the next message, what the layer holds now
without waiting, and what a batch sent as one message still holds. It knows nothing of
ids or clients; the relay (:mod:`broadcast.stream.relay`) decides what to do with each.

A receive that had to wait is started eagerly (:mod:`broadcast.seams.eager`) and kept
for the next take, so that polling the layer between fan-outs costs no task.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from broadcast.group import unpacked
from broadcast.seams import eager
from broadcast.seams.layers import redis as redis_layer

Message = dict[str, Any]


class Receiver:
    """Takes the relay's messages from ``layer`` on ``channel``, in order."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel: str | None = None
        self.idle_since: float | None = None  # waiting on an empty layer since
        self._takes_from_redis: bool | None = None  # known at the first batch
        # A receive that had to wait, begun while a batch was collected: the next take
        # finishes it (after a failure too, so no message it takes is lost).
        self._pending: eager.Started[Message] | None = None
        # The rest of a batch (several broadcasts published at once, sent as one
        # message) whose first was handed on: the next receives and polls take these.
        self._unpacked: collections.deque[Message] = collections.deque()
        self._failure: Exception | None = None  # a receive failed while a batch was taken

    async def receive(self) -> Message:
        """The next message, waiting for one if the layer holds none."""
        if self._unpacked:
            return self._unpacked.popleft()
        pending, self._pending = self._pending, None
        if pending is None:
            pending = eager.start(self.layer.receive(self.channel))
        if not pending.done:
            self.idle_since = time.monotonic()
        try:
            return self._unpack(await pending.rest())
        finally:
            self.idle_since = None

    def poll(self) -> Message | None:
        """
        A message the layer holds now, without waiting; None if it holds none (the
        receive begun for it waits, and a later poll finishes it once a message has
        arrived) or if a receive failed (:meth:`failure` gives it).
        """
        if self._unpacked:
            return self._unpacked.popleft()
        if self._failure is not None:
            return None
        pending = self._pending
        try:
            if pending is None:
                pending = eager.start(self.layer.receive(self.channel))
                if not pending.done:
                    self._pending = pending
                    return None
            elif not pending.step():
                return None
        except Exception as exc:
            self._pending, self._failure = None, exc
            return None
        self._pending = None
        return None if pending.value is None else self._unpack(pending.value)

    def take_held(self, batch: list[Message], limit: int) -> None:
        """Add to ``batch`` what the layer holds already, up to ``limit`` messages."""
        while len(batch) < limit:
            message = self.poll()
            if message is None:
                return
            batch.append(message)

    async def take_queued(self, limit: int) -> list[Message]:
        """
        channels-redis core: what is left of the last batch, or else up to ``limit``
        messages Redis holds for this channel, in one round trip; no receive is under way.
        """
        if self._unpacked:
            taken = list(self._unpacked)
            self._unpacked.clear()
            return taken
        queued = await redis_layer.take_queued(self.layer, self.channel or "", limit)
        return [one for message in queued for one in unpacked(message) or [message]]

    def redis_holds_the_queue(self) -> bool:
        """Whether this channel's messages wait in channels-redis core's queue, to take at once."""
        if self._takes_from_redis is None:
            self._takes_from_redis = redis_layer.can_take_queued(self.layer)
        return self._takes_from_redis

    def failure(self) -> Exception | None:
        """A receive that failed while a batch was taken, once; None if none did."""
        failed, self._failure = self._failure, None
        return failed

    def cancel(self) -> None:
        """Abandon a receive under way (the relay is stopping)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def _unpack(self, message: Message) -> Message:
        """``message``, or a batch's first message, keeping the rest for the next takes."""
        inner = unpacked(message)
        if inner is None:
            return message
        self._unpacked.extend(inner[1:])
        return inner[0]
