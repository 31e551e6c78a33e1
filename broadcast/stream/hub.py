"""
The process hub: register and unregister clients, and run what feeds them (the relay,
the heartbeat) from the first client to the process's shutdown.

A port of the Go hub (register, unregister, broadcast, a bounded send buffer per
client) onto Channels. The channel layer carries each broadcast between processes;
inside a process, one relay (:mod:`broadcast.stream.relay`) is the only member of the
broadcast group and owns the stream position, and the fan-out
(:mod:`broadcast.stream.fanout`) writes the already-serialised envelope into each
local client's outbox (:mod:`broadcast.clients.outbox`). There is no channel-layer
queue per client, no JSON work per client, and no database call on the delivery path.

Each event loop has its own hub (daphne and uvicorn run one loop per process).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from channels.layers import get_channel_layer

from broadcast import metrics
from broadcast.conf import conf
from broadcast.seams import servers
from broadcast.stream import singleprocess, tuning
from broadcast.stream.counts import Counts
from broadcast.stream.fanout import FanOut
from broadcast.stream.heartbeat import heartbeat
from broadcast.stream.relay import STOP_WAIT_SECONDS, Relay
from broadcast.stream.shutdown import close_in_batches, drain

if TYPE_CHECKING:
    from broadcast.clients.outbox import Outbox

logger = logging.getLogger(__name__)


class ProcessHub(FanOut):
    """This process's clients, the relay that feeds them, and their counts."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = False
        self.relay = Relay(
            get_channel_layer(conf.BROADCAST_CHANNEL_LAYER), conf.BROADCAST_GROUP, self
        )
        self.counts = Counts(current=lambda: len(self.clients), topics=self.topic_counts)
        self._membership = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def current(self) -> int:
        return len(self.clients)

    @property
    def last_id(self) -> int:
        """The stream position, which the relay owns: welcomes and pongs report it."""
        return self.relay.position

    @property
    def relay_state(self) -> str:
        """
        idle (no client yet), running, holding (at a gap the database cannot fill
        yet), restarting (after a failure) or stopped.
        """
        if not self.relay.started:
            return "stopped" if self.stopping else "idle"
        if self.relay.holding_since is not None:
            return "holding"
        return "running" if self.relay.running else "restarting"

    # Register and unregister -------------------------------------------------

    async def register(
        self,
        outbox: Outbox,
        welcome: Callable[[int], str],
        *,
        hold: bool = False,
        limit: int | None = None,
        topics: Iterable[str] = (),
        answer: str | None = None,
        owner: str | None = None,
    ) -> bool:
        """
        Add a client, unless the process already has ``limit`` clients (False). The
        first one in the process starts the relay; then the client gets its welcome
        frame (built by ``welcome(last_id)``) and every broadcast relayed after it,
        global or on one of its ``topics``, with nothing in between. ``answer``
        (what it was granted) goes right after the welcome; a revocation of ``owner``
        closes it.
        """
        # The lock only matters while the relay joins, which ends with reading the
        # last id: a client that came meanwhile waits for it. Afterwards, clients
        # register without it (an uncontended asyncio.Lock still costs a few
        # microseconds a connect, and a queue of waiters after a join).
        if not self.relay.started or self._membership.locked():
            async with self._membership:
                if not self.relay.started:
                    await self.relay.start()  # sets last_id before it receives
        if self._heartbeat is None:
            self._heartbeat = asyncio.ensure_future(heartbeat(self.counts, self.relay))
        # No await from here on: the limit holds for a burst of connects, and the
        # welcome's last id and the first relayed broadcast cannot be interleaved.
        if limit is not None and len(self.clients) >= limit:
            return False
        outbox.push_text(welcome(self.last_id))
        if answer is not None:
            outbox.push_text(answer)
        if hold:
            outbox.hold()
        self.add(outbox, owner)
        self.subscribe(outbox, topics)
        tuning.connection_opened()
        self.counts.accepted()
        metrics.connections.inc()
        metrics.connections_accepted.inc()
        return True

    def unregister(self, outbox: Outbox) -> None:
        """
        Remove a client. The process stays in the group when its last client leaves:
        leaving would mean stopping a relay that may be inside the layer's receive,
        and the next client would wait for that. A relay with no clients costs one
        receive per broadcast.
        """
        if self.remove(outbox):
            metrics.connections.dec()
            if not self.stopping:  # collecting garbage on the way out is wasted time
                tuning.connection_closed(len(self.clients))

    # Stopping ----------------------------------------------------------------

    async def shutdown(self) -> None:
        """
        Close every client with 1012 (service restart), in batches spread over half of
        BROADCAST_SHUTDOWN_TIMEOUT, and wait, within the whole of it, for the close
        frames to leave this process; then stop and mark this process's row stopped.
        """
        self.stopping = True  # from now on, connects are turned away (consumers.py)
        timeout = conf.BROADCAST_SHUTDOWN_TIMEOUT
        until = asyncio.get_running_loop().time() + timeout
        await drain(await close_in_batches(self.clients, timeout / 2, until), until)
        metrics.connections.dec(len(self.clients))
        self.clients.clear()
        metrics.process_stopped()
        await self.close()
        try:
            await self.counts.write(stopped=True)
        except Exception as exc:
            logger.warning("Could not mark this process stopped: %s", exc)
        await self.counts.release(STOP_WAIT_SECONDS)

    async def close(self) -> None:
        """Stop the relay and the heartbeat (tests, and shutdown), hanging on neither."""
        heartbeat_task, self._heartbeat = self._heartbeat, None
        if heartbeat_task is not None:
            heartbeat_task.cancel()
            await asyncio.wait([heartbeat_task], timeout=STOP_WAIT_SECONDS)
        await self.counts.release(STOP_WAIT_SECONDS)  # after a beat still in its thread
        await self.relay.stop()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProcessHub] = (
    weakref.WeakKeyDictionary()
)


def get_hub() -> ProcessHub:
    """The hub of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        # The process serves clients from now on: on the in-memory layer, only it may
        # (ImproperlyConfigured if another process does).
        singleprocess.claim_for_layer()
        hub = _hubs[loop] = ProcessHub()
        servers.install_shutdown(lambda: _shutdown(hub))
    return hub


def running_hub() -> ProcessHub | None:
    """
    The running loop's hub if a client has created one, without creating it: what
    health checks report on, since creating a hub would start nothing worth reporting.
    """
    try:
        return _hubs.get(asyncio.get_running_loop())
    except RuntimeError:
        return None


async def _shutdown(hub: ProcessHub) -> None:
    try:
        await hub.shutdown()
    except Exception:  # the server's shutdown must run regardless
        logger.exception("Graceful shutdown failed")
