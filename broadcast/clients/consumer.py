"""
The WebSocket side of the hub: accept, register, answer the client's frames, close,
unregister. Who may connect and subscribe is decided by its access rules
(:mod:`broadcast.clients.access`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from broadcast.clients import authorizer
from broadcast.clients.access import AccessRules
from broadcast.clients.closing import SLOW_CLIENT_GRACE_SECONDS, Closing
from broadcast.clients.lean import LeanConsumer
from broadcast.clients.outbox import Outbox
from broadcast.clients.query import ConnectQuery
from broadcast.clients.resume import HistoryUnavailable, resume
from broadcast.conf import conf
from broadcast.protocol import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_REVOKED,
    CLOSE_SERVICE_RESTART,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNSUPPORTED_DATA,
    error_text,
    pong_text,
    subscribed_text,
    unsubscribed_text,
    welcome_text,
)
from broadcast.seams.servers import direct_writer, server_send
from broadcast.stream.hub import get_hub

logger = logging.getLogger(__name__)


class BroadcastConsumer(Closing, AccessRules, LeanConsumer):
    """
    One WebSocket client of the hub. It receives broadcasts; nothing it sends
    reaches other clients.
    """

    outbox: Outbox | None = None
    _resuming: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        checked = time.monotonic()  # access is judged from here on
        query = ConnectQuery.of(self.scope)
        try:
            if query.token is not None and not await self._accept_token(query.token):
                await self.close()  # before accept: the handshake gets 403
                return
            if conf.BROADCAST_REQUIRE_AUTH and not await self._authenticated():
                logger.debug("Refused an anonymous client (BROADCAST_REQUIRE_AUTH)")
                await self.close()
                return
            owner = await self._owner()
        except DatabaseError as exc:  # the token's or the session's user cannot be read
            logger.warning("Refused a client (1013): the database cannot be read (%s)", exc)
            await self.accept()
            await self._close(CLOSE_TRY_AGAIN_LATER, "database unavailable")
            return
        try:
            self.hub = get_hub()
        except ImproperlyConfigured as exc:  # another process serves the in-memory layer
            logger.error("Refused a client (1011): %s", exc)
            await self.accept()
            await self._close(CLOSE_INTERNAL_ERROR, "misconfigured")
            return
        if self.hub.stopping:
            await self.accept()
            await self._close(CLOSE_SERVICE_RESTART, "service restart")
            return
        send = server_send(self.base_send)
        outbox = Outbox(
            send, conf.BROADCAST_MAX_PENDING_BYTES, self._on_overflow, direct_writer(send)
        )
        outbox.on_end = self._on_end
        errors = list(query.errors)
        granted: list[str] = []
        answer = None
        if query.topics:
            # Judged as a hub.subscribe frame's are: the same names refused, repeats merged.
            names, name_errors = authorizer.parse_names(query.topics)
            granted, denied, judged_errors = await self._judge(names, frozenset())
            errors += name_errors + judged_errors
            answer = subscribed_text(granted, denied)
        await self.accept()
        limit = conf.BROADCAST_MAX_CONNECTIONS
        try:
            registered = await self.hub.register(
                outbox,
                welcome_text,
                hold=query.last_id is not None,
                limit=limit,
                topics=granted,
                answer=answer,
                owner=owner,
            )
        except DatabaseError as exc:  # the process's first client: no position to start at
            logger.warning("Refused a client (1013): the database cannot be read (%s)", exc)
            await self._close(CLOSE_TRY_AGAIN_LATER, "database unavailable")
            return
        if not registered:
            logger.warning(
                "Refused a client: this process has %s (BROADCAST_MAX_CONNECTIONS)", limit
            )
            await self._close(CLOSE_TRY_AGAIN_LATER, "server full")
            return
        self.outbox = outbox
        if self.hub.revoked_since(owner, checked):
            # Revoked while its access was being judged: the revocation missed it. Closed
            # at once, before the relay's next turn can write to it.
            outbox.end(CLOSE_REVOKED, "access revoked")
            return
        self._track_expiry()
        for error in errors:
            self._reply_error(error)
        if query.last_id is not None:
            self._start_resume(outbox, query.last_id)
        logger.debug("Client connected (%s in this process)", self.hub.current)

    async def disconnect(self, code: int) -> None:
        if self.outbox is not None:
            self._forget()
            logger.debug("Client disconnected with %s (%s in this process)", code, self.hub.current)

    def _forget(self) -> None:
        """Stop everything this client had running and free its slot; idempotent."""
        if self.outbox is None:
            return
        self.outbox.close()
        self._stop_expiry()
        for task in (self._closer, self._resuming):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self.hub.unregister(self.outbox)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        outbox = self.outbox
        if self._closing or outbox is None:
            return  # frames still arriving after the hub decided to close
        if bytes_data is not None or text_data is None:
            await self._close(CLOSE_UNSUPPORTED_DATA, "binary frames are not accepted")
            return
        if len(text_data) > conf.BROADCAST_MAX_INCOMING_BYTES or (
            len(text_data.encode()) > conf.BROADCAST_MAX_INCOMING_BYTES
        ):
            await self._close(CLOSE_TOO_BIG, "frame too big")
            return
        if not self._within_rate():
            logger.warning("Closed a client that sent frames faster than allowed")
            await self._close(CLOSE_POLICY_VIOLATION, "too many frames")
            return
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):  # nesting deep enough to exhaust the stack
            self._reply_error("malformed JSON")
            return
        frame_type = frame.get("type") if isinstance(frame, dict) else None
        if frame_type == "hub.resume":
            last_id = frame.get("last_id")
            if not _is_id(last_id):
                self._reply_error("hub.resume needs an integer last_id >= 0")
            elif not outbox.holding:  # one resume at a time
                outbox.hold()
                self._start_resume(outbox, last_id)
        elif frame_type == "hub.ping":
            # The hub's position: every broadcast of this client's streams up to it
            # was sent ahead of this frame, so a client may resume from here even when
            # other topics' ids passed it by (resume.py).
            outbox.push_text(pong_text(self.hub.relay.settled))
        elif frame_type == "hub.refresh":
            await self._refresh(frame.get("token"))
        elif frame_type == "hub.subscribe":
            await self._subscribe(outbox, frame.get("topics"))
        elif frame_type == "hub.unsubscribe":
            names, errors = authorizer.parse_names(frame.get("topics"))
            for error in errors:
                self._reply_error(error)
            self.hub.unsubscribe(outbox, names)
            outbox.push_text(unsubscribed_text(names))
        else:
            self._reply_error(f"unknown frame type {frame_type!r}; clients cannot publish")

    def _start_resume(self, outbox: Outbox, last_id: int) -> None:
        """
        Replay history ahead of the live messages the outbox is holding, in a task of
        its own, so that the client's frames (its close among them) are still read
        while a long history streams at the client's pace.
        """
        self._resuming = asyncio.ensure_future(
            self._resume(outbox, last_id, self.hub.last_id, self.hub.subscriptions(outbox))
        )

    async def _resume(
        self, outbox: Outbox, last_id: int, current_id: int, subscribed: frozenset[str]
    ) -> None:
        try:
            await resume(
                outbox,
                last_id,
                current_id,
                SLOW_CLIENT_GRACE_SECONDS,
                subscribed,
                self.hub.relay.recent,
            )
        except HistoryUnavailable as exc:
            # Not hub.reset: the history may well exist; the client keeps its last id.
            logger.warning("Closed a resuming client with %s: %s", CLOSE_TRY_AGAIN_LATER, exc)
            await self._close(CLOSE_TRY_AGAIN_LATER, "history unavailable")

    # Topics ------------------------------------------------------------------

    async def _subscribe(self, outbox: Outbox, raw: Any) -> None:
        """Judge a ``hub.subscribe`` frame's topics, subscribe the granted, answer."""
        names, errors = authorizer.parse_names(raw)
        for error in errors:
            self._reply_error(error)
        granted, denied, judged_errors = await self._judge(names, self.hub.subscriptions(outbox))
        for error in judged_errors:
            self._reply_error(error)
        # No await between subscribing and the answer: once the client reads it,
        # every broadcast of those topics follows it.
        self.hub.subscribe(outbox, granted)
        outbox.push_text(subscribed_text(granted, denied))

    def _reply_error(self, reason: str) -> None:
        self._push_control(error_text(reason))

    def _push_control(self, text: str) -> None:
        if self.outbox is not None:
            self.outbox.push_text(text)

    def _still_open(self) -> bool:
        return not self._closing and self.outbox is not None and not self.outbox.closed

    def _drop_topics(self, names: list[str]) -> None:
        if self.outbox is not None:
            self.hub.unsubscribe(self.outbox, names)
            self.outbox.push_text(unsubscribed_text(names))


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
