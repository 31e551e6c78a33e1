"""
channels-redis's pub/sub layer's private parts: the broadcasts one process publishes
at the same time go to Redis in one round trip (:func:`group_send`).

The layer's own ``group_send`` holds its connection's lock for each PUBLISH, so a
burst published at once from one process reaches Redis one round trip apart, and
every subscribed process wakes for each broadcast alone: its relay receives them one
by one, and each client gets one write per broadcast. Sent in one pipeline instead,
a burst reaches each subscriber in one read, and its relay fans it out as one batch.
And the messages of one pipeline for the same group travel as one message (a
``broadcast.batch``): every process pays its reader's
cost (parse, decode, queue, wake the relay) once for the burst instead of once for
each broadcast, and a second server process on a host pays it once more, not 50 times.

And the layer's reader waits on Redis for a second at a time instead of a tenth
(:func:`quiet_reader`): an idle process otherwise wakes ten times a second to find
nothing, which was a third to a half of what it costs while nothing is sent.

Nothing waits to form a batch: a publish goes out at the next turn of the loop, with
every publish issued before that turn; what is issued while a pipeline is in flight
goes in the next one. The order is the order of the calls.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from broadcast.group import batch_message
from broadcast.seams.servers.base import Probed, Proven, probe

# channels-redis's own logger: the reader loop is its, with one number changed.
logger = logging.getLogger("channels_redis.pubsub")

PROVEN = (Proven("channels-redis", "4.3", "5"), Proven("redis", "5", "9"))
# What the publish reads besides ``_get_layer`` and ``_shards`` (which both read): on
# the layer, on its layer for the running loop, and on the shard (one Redis host's
# connections) that a group's messages go through.
LAYER_NAMES = ("serialize",)
LOOP_LAYER_NAMES = ("_get_shard", "_get_group_channel_name")
SHARD_NAMES = ("_lock", "_ensure_redis", "_redis")
# What the reader reads on each shard.
READER_SHARD_NAMES = ("_do_receiving", "_pubsub", "_receive_message")
# How long the layer's reader waits on Redis before it looks again (channels-redis: 0.1).
READ_SECONDS = 1.0

# This process's probe answers: each asked once, by the first publish or subscription.
probes: dict[str, Probed] = {}
# A batch's texts at most, so that one message does not grow past what a subscriber's
# buffers take in one go (a broadcast larger than this travels alone).
BATCH_MAX_BYTES = 256 * 1024


def is_pubsub(layer: Any) -> bool:
    """Whether ``layer`` is channels-redis's pub/sub layer (imported, if it is in use)."""
    pubsub = sys.modules.get("channels_redis.pubsub")
    return pubsub is not None and isinstance(layer, pubsub.RedisPubSubChannelLayer)


async def group_send(
    layer: Any, group: str, message: dict[str, Any], most: int, batches: bool = False
) -> None:
    """
    ``layer.group_send(group, message)``, in one pipeline with the other publishes of
    this loop that are ready at the same time, at most ``most`` in one; with
    ``batches``, those to the same group as one message. Raises what the pipeline
    raised, for every publish in it. Cancelled before its pipeline left, the message
    is not sent; after, it may have been.
    """
    if most < 2 or not is_pubsub(layer) or not _publish_probed(layer):
        await layer.group_send(group, message)
        return
    loop_layer = layer._get_layer()
    channel = loop_layer._get_group_channel_name(group)
    shard = loop_layer._get_shard(channel)
    outgoing = _outgoing.get(shard)
    if outgoing is None:
        outgoing = _outgoing[shard] = ShardPipeline()
    await outgoing.send(shard, Pending(channel, message, layer.serialize, batches), most)


def quiet_reader(layer: Any) -> None:
    """
    Before this loop's first subscription on ``layer``: its reader waits READ_SECONDS
    on Redis for each message instead of 0.1 s. A message still wakes it at once; the
    wait only bounds how often an idle reader looks again.
    """
    if not is_pubsub(layer) or not _reader_probed(layer):
        return
    for shard in layer._get_layer()._shards:
        # channels-redis starts (and after a flush, restarts) its reader task with
        # ``self._do_receiving()``; a reader already running keeps its own loop.
        if "_do_receiving" not in vars(shard):
            shard._do_receiving = functools.partial(_receive_quietly, shard)


async def _receive_quietly(shard: Any) -> None:
    """channels-redis's ``_do_receiving``, with READ_SECONDS for each read."""
    while True:
        try:
            if shard._pubsub and shard._pubsub.subscribed:
                message = await shard._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=READ_SECONDS
                )
                shard._receive_message(message)
            else:
                await asyncio.sleep(0.1)
        except (asyncio.CancelledError, TimeoutError, GeneratorExit):
            raise
        except BaseException:  # as channels-redis's loop: the reader must live on
            # Its words, on its logger: what log filters and alerts already know.
            logger.exception("Unexpected exception in receive task")
            await asyncio.sleep(1)


def _publish_probed(layer: Any) -> bool:
    return _probed(
        layer,
        "channels-redis pub/sub pipelined publish",
        (LAYER_NAMES, LOOP_LAYER_NAMES, SHARD_NAMES),
    )


def _reader_probed(layer: Any) -> bool:
    return _probed(layer, "channels-redis pub/sub quiet reader", ((), (), READER_SHARD_NAMES))


def _probed(layer: Any, seam: str, names: tuple[tuple[str, ...], ...]) -> bool:
    """Whether the layer has ``names`` at each level, and channels-redis is proven; once."""
    probed = probes.get(seam)
    if probed is None:
        probed = probes[seam] = probe(seam, PROVEN, lambda: _missing(layer, *names))
    return probed.safe


def _missing(
    layer: Any,
    layer_names: tuple[str, ...],
    loop_layer_names: tuple[str, ...],
    shard_names: tuple[str, ...],
) -> list[str]:
    absent = _absent(layer, "RedisPubSubChannelLayer", ("_get_layer", *layer_names))
    if absent:
        return absent
    loop_layer = layer._get_layer()
    absent = _absent(loop_layer, "RedisPubSubLoopLayer", ("_shards", *loop_layer_names))
    if absent:
        return absent
    return _absent(loop_layer._shards[0], "RedisSingleShardConnection", shard_names)


def _absent(owner: Any, kind: str, names: tuple[str, ...]) -> list[str]:
    return [f"{kind}.{name}" for name in names if not hasattr(owner, name)]


@dataclass(eq=False)
class Pending:
    channel: str
    message: dict[str, Any]
    serialize: Callable[[dict[str, Any]], bytes]
    batches: bool
    sent: asyncio.Future[None] = field(init=False)

    def __post_init__(self) -> None:
        self.sent = asyncio.get_running_loop().create_future()

    def size(self) -> int:
        text = self.message.get("text")
        return len(text) if isinstance(text, str) else 0


@dataclass
class ShardPipeline:
    """
    The publishes waiting for one shard's connection, and the task that sends them.
    Only that task holds the shard, while it runs: an idle entry must not keep its
    key alive, or every event loop that published once (each ``async_to_sync``
    call of a sync ``publish``) would leave its shard behind.
    """

    queue: list[Pending] = field(default_factory=list)
    sender: asyncio.Task[None] | None = None

    async def send(self, shard: Any, pending: Pending, most: int) -> None:
        self.queue.append(pending)
        if self.sender is None:
            self.sender = asyncio.ensure_future(self._send_queued(shard, most))
        # Cancelling the caller cancels this future: a queued message is then left out.
        await pending.sent

    async def _send_queued(self, shard: Any, most: int) -> None:
        batch: list[Pending] = []
        try:
            while self.queue:
                batch, self.queue = self.queue[:most], self.queue[most:]
                batch = [pending for pending in batch if not pending.sent.done()]
                if not batch:
                    continue
                try:
                    await _publish(shard, batch)
                except Exception as exc:
                    _settle(batch, exc)
                else:
                    _settle(batch, None)
        except BaseException as exc:  # cancelled with its loop: nobody is left waiting
            _settle(batch + self.queue, exc)
            self.queue = []
            raise
        finally:
            self.sender = None


async def _publish(shard: Any, batch: list[Pending]) -> None:
    # The shard's lock keeps these in order with the layer's own publishes and
    # subscriptions on the same connection pool.
    async with shard._lock:
        shard._ensure_redis()
        redis = shard._redis
        messages = list(_messages(batch))
        if len(messages) == 1:
            await redis.publish(*messages[0])
            return
        async with redis.pipeline(transaction=False) as pipe:
            for channel, data in messages:
                pipe.publish(channel, data)
            await pipe.execute()


def _messages(batch: list[Pending]) -> Iterator[tuple[str, bytes]]:
    """
    Each PUBLISH of ``batch``, in order: runs of messages to the same group as one
    batch message where they allow it, every other message alone.
    """
    run: list[Pending] = []
    run_bytes = 0
    for pending in batch:
        if run and (
            not pending.batches
            or pending.channel != run[0].channel
            or run_bytes + pending.size() > BATCH_MAX_BYTES
        ):
            yield _packed(run)
            run, run_bytes = [], 0
        if pending.batches:
            run.append(pending)
            run_bytes += pending.size()
        else:
            yield pending.channel, pending.serialize(pending.message)
    if run:
        yield _packed(run)


def _packed(run: list[Pending]) -> tuple[str, bytes]:
    first = run[0]
    if len(run) == 1:
        return first.channel, first.serialize(first.message)
    return first.channel, first.serialize(batch_message([pending.message for pending in run]))


def _settle(batch: list[Pending], error: BaseException | None) -> None:
    for pending in batch:
        if pending.sent.done():  # its caller was cancelled
            continue
        if error is None:
            pending.sent.set_result(None)
        elif isinstance(error, asyncio.CancelledError):
            pending.sent.cancel()
        else:
            pending.sent.set_exception(error)


# One per shard, and so per event loop: the layer keeps a loop layer per loop.
_outgoing: weakref.WeakKeyDictionary[Any, ShardPipeline] = weakref.WeakKeyDictionary()
