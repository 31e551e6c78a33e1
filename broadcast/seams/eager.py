"""
Running a coroutine's first step at once, inside the calling task, and its rest later
in that same task.

The relay's receiver uses it: the channel layer's ``receive`` finishes without
suspending when the layer already holds a message (the relay coalesces those into one
batch, and only a receive that must wait ends the batch, to be finished by the next
take). Only one task ever starts and finishes a step, so context variables, cancel
scopes and timeouts tied to a task hold.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Started(Generic[T]):
    """A coroutine after its first step: finished with ``value``, or suspended."""

    coroutine: Coroutine[Any, Any, T]
    done: bool
    value: T | None = None
    blocked_on: Any = None

    def cancel(self) -> None:
        """Abandon a suspended coroutine as a task's cancellation would: its cleanup runs."""
        if self.done:
            return
        self.done = True
        try:
            self.coroutine.throw(asyncio.CancelledError())
        except (asyncio.CancelledError, StopIteration, Exception):
            return
        self.coroutine.close()  # it went on waiting despite the cancellation

    def step(self) -> bool:
        """
        Whether it has finished, after running its next step now if what it waits on
        is done, as its task would have: a receive begun on an empty layer finishes
        once a message arrives, without a task to wake. An exception in it propagates.
        """
        if self.done:
            return True
        waiting = self.blocked_on
        if waiting is not None and not (isinstance(waiting, asyncio.Future) and waiting.done()):
            return False
        try:
            self.blocked_on = self.coroutine.send(None)
        except StopIteration as stop:
            self.done, self.value = True, stop.value
        except BaseException:
            self.done = True  # finished, by raising: nothing is left to cancel or await
            raise
        return self.done

    def rest(self) -> Awaitable[T]:
        """An awaitable for the rest of it (its value at once, if it had finished)."""
        return _rest(self)  # type: ignore[return-value]  # types.coroutine is awaitable


def start(coroutine: Coroutine[Any, Any, T]) -> Started[T]:
    """Run ``coroutine`` up to its first suspension; an exception in it propagates."""
    try:
        blocked_on = coroutine.send(None)
    except StopIteration as stop:
        return Started(coroutine, True, stop.value)
    return Started(coroutine, False, blocked_on=blocked_on)


@types.coroutine
def _rest(started: Started[T]) -> Generator[Any, Any, T]:
    """
    Finish a started coroutine as its own ``await`` would have: the running task waits
    on the future it suspended on, and whatever the task is sent or thrown (a
    cancellation included) goes on into the coroutine, so its own cleanup runs.
    """
    if started.done:
        return started.value  # type: ignore[return-value]
    coroutine, blocked_on = started.coroutine, started.blocked_on
    while True:
        try:
            sent = yield blocked_on
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as exc:
            try:
                blocked_on = coroutine.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            continue
        try:
            blocked_on = coroutine.send(sent)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
