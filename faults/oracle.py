"""
The sequencer's oracle: every client it connects reads all the time, and every frame
is checked as it arrives; the end of a sequence checks what no single frame shows.

- A client's persisted ids strictly increase. An id missing between two it got, or
  after its welcome or resume point, must be a burnt id (a failed send) unless a
  ``hub.reset`` explained it; at the end, every client has every sent id from its
  start to the newest.
- A server that closes a reading client (a restart, a slow-client cut) is answered
  as a real client does: reconnect with ``?last_id`` of the last id seen, to either
  process, and the checks go on across the reconnect.
- Topics: a client gets a topic's broadcasts only while it is subscribed (from the
  ``hub.subscribed`` that granted it until the ``hub.unsubscribed`` that ended it),
  and is owed every one of them sent after it subscribed, across reconnects (which
  resume with its topics, as the JS client does).
- Every connect gets its welcome within WELCOME_SECONDS.
- Access (:mod:`faults.access`): once a revocation of a user is acknowledged, no
  broadcast published after it reaches a connection of that user opened before it;
  each closes with 4003 and does not come back, and no other connection gets 4003.
- At the end: counts on /metrics return to zero once clients leave, no row stays
  pending, no traceback in any server's log, and memory is near its baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import deque
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness.clients import stuck_client
from harness.servers import ROOT, Server, Site

WELCOME_SECONDS = 5.0
SETTLE_SECONDS = 20.0
MEMORY_GROWTH_LIMIT = 150 * 1024 * 1024
LOG_FAULTS = re.compile(r"Traceback|Exception in ASGI application|took too long to shut down")
# Tracebacks the servers' libraries log for what the sequencer does on purpose, none
# of them the hub's: uvicorn's websockets-sansio on invalid UTF-8 from a client (it
# then closes that client with 1007), channels-redis's fire-and-forget cleaner task
# of a receive, whose failure while Redis is away asyncio reports, and its pub/sub
# layer's reader, which logs each failed reconnect while Redis is away (a block that
# ends at a Redis error no other exception chains onto).
KNOWN_LOG_BLOCKS = re.compile(
    r"ERROR: +Invalid UTF-8 sequence received from client\.\n"
    r"Traceback.*?\nUnicodeDecodeError: [^\n]*\n"
    r"|Task exception was never retrieved\nfuture: <Task finished name='[^']*' "
    r"coro=<RedisChannelLayer\._clean_receive_backup\(\).*?\nredis\.exceptions\.\w+: [^\n]*\n"
    r"|Unexpected exception in receive task\n(?:[^\n]*\n)*?"
    r"redis\.exceptions\.\w+: [^\n]*\n(?!\nDuring handling|\nThe above exception)",
    re.DOTALL,
)
PUBLISHERS = 3
# "Try again later" (a resume while the database is away, a full server): a client
# keeps its last id and comes back after a pause.
TRY_AGAIN_LATER = 1013
TRY_AGAIN_SECONDS = 0.5
# The longest a fault may keep a client told to try again (the database faults: 4 s).
TRY_AGAIN_FOR_SECONDS = 20.0
REVOKED = 4003
# How long publishers have to finish their request once the run stops.
STOP_SECONDS = 10.0


class Violation(AssertionError):
    logs: list[str] = []


class Client:
    """One reading client, across its reconnects."""

    def __init__(
        self,
        oracle: Oracle,
        server: Server,
        query: str,
        topics: tuple[str, ...] = (),
        token: str | None = None,
        owner: str | None = None,
    ) -> None:
        self.oracle = oracle
        self.token = token  # a connect token it carries on every (re)connect
        self.owner = owner  # the user it connects as, if any
        self.revoking = False  # its user's revocation was asked for: it may get 4003
        self.revoked_after: int | None = None  # no id after this may reach it
        self.welcomed_at = 0.0
        self.server = server
        self.query = query
        self.requested = set(topics)  # what it asks for when it (re)connects
        self.topics: set[str] = set()  # what the hub granted it, by its answers
        # topic -> ids after this one are owed (topics it left are owed no more).
        self.owed_from: dict[str, int] = {}
        self.ws: Any = None
        self.task: asyncio.Task | None = None
        self.last_seen: int | None = None  # the newest persisted id this client has
        self.start: int | None = None  # ids after this one are owed to it
        self.gaps: list[tuple[int, int]] = []  # (after, before): ids missing between
        self.resets: list[tuple[int, int]] = []  # (from, to): ranges a reset excused
        self.ephemeral_n: dict[str, int] = {}  # publish request -> the last n it got
        self.leaving = False
        self.reconnects = 0
        # What a violation report shows: each (re)connect and the frames that followed.
        self.history: list[str] = []
        self.recent: deque[str] = deque(maxlen=40)  # what a violation report shows

    def url_query(self) -> str:
        parts = [self.query[1:]] if self.query else []
        if self.requested:
            parts.insert(0, "topics=" + ",".join(sorted(self.requested)))
        if self.token is not None:
            parts.insert(0, f"token={self.token}")
        return "?" + "&".join(parts) if parts else ""

    async def open(self) -> None:
        requested = _requested_last_id(self.query)
        deadline = time.monotonic() + TRY_AGAIN_FOR_SECONDS
        while True:
            try:
                started, welcome = await self._welcome()
                break
            except ConnectionClosed as exc:
                # "Try again later" before the welcome (a process's first client while
                # its database is away): back off and come back, as a real client does.
                if exc.rcvd is None or exc.rcvd.code != TRY_AGAIN_LATER:
                    raise Violation(
                        f"no welcome from {self.server.kind}:{self.server.port} ({exc})"
                    ) from None
                if time.monotonic() > deadline:
                    raise Violation(
                        f"told to try again later for {TRY_AGAIN_FOR_SECONDS}s"
                    ) from None
                self.history.append(f"closed {TRY_AGAIN_LATER} before its welcome")
                await asyncio.sleep(TRY_AGAIN_SECONDS)
        if welcome.get("type") != "hub.welcome":
            raise Violation(f"first frame was not a welcome: {welcome}")
        took = time.monotonic() - started
        if took > WELCOME_SECONDS:
            raise Violation(f"welcome took {took:.1f}s")
        self._welcomed(welcome, requested)

    async def _welcome(self) -> tuple[float, dict]:
        started = time.monotonic()
        self.topics = set()
        try:
            async with asyncio.timeout(WELCOME_SECONDS):
                self.ws = await connect(
                    self.server.ws_url + self.url_query(), origin=self.server.http, max_size=2**22
                )
            async with asyncio.timeout(WELCOME_SECONDS):
                return started, json.loads(await self.ws.recv())
        except ConnectionClosed:
            raise
        except (OSError, TimeoutError) as exc:
            raise Violation(
                f"no welcome from {self.server.kind}:{self.server.port} within "
                f"{WELCOME_SECONDS}s ({type(exc).__name__}: {exc})"
            ) from None

    def _welcomed(self, welcome: dict, requested: int | None) -> None:
        self.port = self.server.port
        self.welcomed_at = time.monotonic()
        welcome_id = welcome["payload"]["last_id"]
        line = f"connect {self.server.kind}:{self.server.port}{self.query} welcome {welcome_id}"
        self.history.append(line)
        self.recent.append(line)
        start = requested if requested is not None and requested <= welcome_id else welcome_id
        if self.last_seen is None:
            self.start = self.last_seen = start
            self.owed_from = dict.fromkeys(self.requested, -1)
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.take(json.loads(raw))
        except ConnectionClosed:
            pass
        if self.leaving:
            return
        if self.ws.close_code == REVOKED and not self.revoking:
            self.oracle.fail(f"a client of {self.server.kind} got 4003 with no revocation")
        if self.revoking:  # a revoked user's connection does not come back
            self.history.append(f"closed {self.ws.close_code} while revoked")
            if self in self.oracle.clients:
                self.oracle.clients.remove(self)
            return
        expected = self.oracle.expected_close.get(self.port)
        if expected is not None and self.ws.close_code != expected:
            self.oracle.fail(
                f"a client of {self.server.kind}:{self.port}, stopped with SIGTERM, got close "
                f"code {self.ws.close_code}, not {expected}"
            )
        if self.ws.close_code == TRY_AGAIN_LATER:
            self.history.append(f"closed {TRY_AGAIN_LATER} {self.ws.close_reason}")
            await asyncio.sleep(TRY_AGAIN_SECONDS)  # as the JS client backs off
        await self.oracle.reconnect(self)

    def take(self, frame: dict) -> None:
        kind, msg_id = frame.get("type"), frame.get("id")
        line = f"{kind} {msg_id} {frame.get('payload') if kind.startswith('hub.') else ''}"
        self.recent.append(line)
        if len(self.history) < 200:
            self.history.append(line)
        if kind == "hub.subscribed":
            self.topics |= set(frame["payload"]["topics"])
            return
        if kind == "hub.unsubscribed":
            self.topics -= set(frame["payload"]["topics"])
            return
        topic = frame.get("topic")
        if topic is not None and topic not in self.topics:
            self.oracle.fail(
                f"client got id {msg_id} of topic {topic!r} while subscribed to "
                f"{sorted(self.topics)} on {self.server.kind}:{self.server.port}; its last "
                "frames:\n    " + "\n    ".join(self.recent)
            )
            return
        if kind == "hub.resumed" and self.last_seen == self.start < frame["payload"]["from"]:
            # It asked for ?last_id= past its welcome, and the hub took it at its word
            # (its relay passed that id): what came before is the client's, not owed.
            self.start = self.last_seen = frame["payload"]["from"]
            return
        if kind == "hub.reset":
            to = frame["payload"]["last_id"]
            self.resets.append((self.last_seen, to))
            self.last_seen = max(self.last_seen, to)
            return
        if not isinstance(msg_id, int):
            self.take_ephemeral(frame)
            return
        if self.revoked_after is not None and msg_id > self.revoked_after:
            self.oracle.fail(
                f"a connection of revoked user {self.owner} got id {msg_id}, published after "
                f"its revocation was acknowledged (at id {self.revoked_after}) on "
                f"{self.server.kind}:{self.server.port}"
            )
            return
        if msg_id <= self.last_seen:
            self.oracle.fail(
                f"client got id {msg_id} after {self.last_seen} (not increasing) on "
                f"{self.server.kind}:{self.server.port}; its last frames:\n    "
                + "\n    ".join(self.recent)
            )
            return
        if msg_id > self.last_seen + 1:
            self.gaps.append((self.last_seen, msg_id))
        self.last_seen = msg_id

    def take_ephemeral(self, frame: dict) -> None:
        """
        One publish request's ephemeral broadcasts arrive in the order it sent them:
        published one after another, on every layer; issued at once, on the pub/sub
        layer (docs/guarantees.md).
        """
        payload = frame.get("payload")
        if frame.get("type") != "fault.seq" or not isinstance(payload, dict):
            return
        if payload.get("at_once") and not self.oracle.orders_concurrent_publishes:
            return
        burst, n = payload.get("burst"), payload["n"]
        if n <= self.ephemeral_n.get(burst, -1):
            self.oracle.fail(
                f"client got ephemeral n={n} of request {burst} after n="
                f"{self.ephemeral_n[burst]} on {self.server.kind}:{self.server.port}"
            )
        self.ephemeral_n[burst] = n

    def owes(self, msg_id: int, topic: str | None) -> bool:
        """Whether this client must have got ``msg_id`` of ``topic``."""
        return topic is None or msg_id > self.owed_from.get(topic, msg_id)

    async def close(self) -> None:
        self.leaving = True
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await asyncio.wait([self.task], timeout=5)


def _requested_last_id(query: str) -> int | None:
    match = re.search(r"last_id=(\d+)$", query)
    return int(match.group(1)) if match else None


class Publishers:
    """PUBLISHERS publisher processes (faults/publisher.py), used one request at a time."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.processes: list[subprocess.Popen] = []
        self.free: asyncio.Queue[subprocess.Popen] = asyncio.Queue()

    async def start(self) -> None:
        for _ in range(PUBLISHERS):
            process = subprocess.Popen(
                [sys.executable, "-m", "faults.publisher"], cwd=ROOT, env=self.site.env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            self.processes.append(process)
            self.free.put_nowait(process)

    async def ask(self, request: dict) -> dict:
        process = await self.free.get()
        try:
            return await asyncio.to_thread(_exchange, process, request)
        finally:
            self.free.put_nowait(process)

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(OSError):  # a publisher that died has no pipe left
                process.stdin.close()
        deadline = time.monotonic() + STOP_SECONDS
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()  # it holds the run's output open while it lives
                process.wait()


def _exchange(process: subprocess.Popen, request: dict) -> dict:
    process.stdin.write(json.dumps(request) + "\n")
    process.stdin.flush()
    line = process.stdout.readline()
    if not line:
        raise Violation(f"the publisher process died on {request}")
    return json.loads(line)


class Oracle:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.clients: list[Client] = []
        self.servers: list[Server] = []
        self.publishers = Publishers(site)
        # The core layer sends concurrent publishes on several pooled connections.
        self.orders_concurrent_publishes = site.env.get("REDIS_LAYER") == "pubsub"
        self.violations: list[str] = []
        self.baseline_rss: dict[int, int] = {}
        self.going: set[int] = set()
        # Port of a server being stopped -> the close code its clients must get.
        self.expected_close: dict[int, int] = {}

    def fail(self, message: str) -> None:
        self.violations.append(message)

    async def baseline(self, servers: list[Server]) -> None:
        self.servers = servers
        await self.publishers.start()
        for server in servers:
            self.baseline_rss[server.process.pid] = _rss(server.process.pid)

    async def check_step(self) -> None:
        if self.violations:
            raise Violation(self.violations[0])

    # Clients --------------------------------------------------------------------

    async def connect(
        self,
        server: Server,
        query: str = "",
        track: bool = True,
        topics: tuple[str, ...] = (),
        token: str | None = None,
        owner: str | None = None,
    ) -> Client:
        client = Client(self, server, query, topics, token, owner)
        await client.open()
        if track:
            self.clients.append(client)
        else:
            client.leaving = True
        return client

    async def subscribe(self, client: Client, topic: str, *, unsubscribe: bool) -> None:
        """Subscribe (or unsubscribe) a client by frame and wait for the hub's answer."""
        kind = "hub.unsubscribe" if unsubscribe else "hub.subscribe"
        try:
            await client.ws.send(json.dumps({"type": kind, "topics": [topic]}))
        except ConnectionClosed:
            return  # it is reconnecting; the sequence goes on
        deadline = time.monotonic() + WELCOME_SECONDS
        while (topic in client.topics) == unsubscribe:
            if time.monotonic() > deadline:
                if client.ws.close_code is not None:
                    return  # closed meanwhile (a restart); its reconnect asks again
                self.fail(f"no answer to {kind} {topic!r} within {WELCOME_SECONDS}s")
                return
            await asyncio.sleep(0.02)
        if unsubscribe:
            client.requested.discard(topic)
            client.owed_from.pop(topic, None)  # what was in flight may or may not come
        else:
            client.requested.add(topic)
            # Ids committed after the answer was read were sent after it, so are owed.
            newest = await self.newest_id()
            client.owed_from.setdefault(topic, newest)

    async def disconnect(self, client: Client) -> None:
        self.clients.remove(client)
        await client.close()

    async def reconnect(self, client: Client) -> None:
        """What a real client does when the server closes it: resume, elsewhere if need be."""
        if client not in self.clients or client.revoking:
            return
        for attempt in range(40):
            if client.revoking:  # revoked meanwhile: it would be refused, or kicked again
                return
            live = [s for s in self.servers if s.process.poll() is None and id(s) not in self.going]
            if live:
                client.server = live[attempt % len(live)]
                client.query = f"?last_id={client.last_seen}"
                client.reconnects += 1
                try:
                    await client.open()
                    return
                except Violation:
                    pass
            await asyncio.sleep(0.25)
        self.fail(
            f"a client could not reconnect after its server closed it (last id {client.last_seen})"
        )

    async def server_going(self, server: Server, close_code: int | None = None) -> None:
        self.going.add(id(server))
        if close_code is not None:
            self.expected_close[server.port] = close_code
        self.baseline_rss.pop(server.process.pid, None)

    async def server_back(self, server: Server) -> None:
        self.going.discard(id(server))

    async def close_all(self) -> None:
        await asyncio.gather(*(self.disconnect(client) for client in list(self.clients)))

    def stop(self) -> None:
        self.publishers.stop()

    async def hostile(self, server: Server, kind: str) -> None:
        if kind == "refused":  # a handshake from a foreign Origin
            try:
                ws = await connect(server.ws_url, origin="http://evil.example")
            except InvalidStatus as exc:
                if exc.response.status_code != 403:
                    self.fail(f"a foreign Origin got {exc.response.status_code}, not 403")
                return
            await ws.close()
            self.fail("a WebSocket from a foreign Origin was accepted")
            return
        ws = await connect(server.ws_url, origin=server.http, max_size=2**22)
        async with asyncio.timeout(WELCOME_SECONDS):
            await ws.recv()
        try:
            if kind == "nested":
                await ws.send("[" * 1500 + "]" * 1500)
            elif kind == "invalid_utf8":
                await asyncio.to_thread(_send_invalid_utf8, server.port)
            elif kind == "oversize":
                await ws.send("x" * 100_000)
            elif kind == "binary":
                await ws.send(b"\x00\x01")
            elif kind == "flood":
                for _ in range(80):
                    await ws.send('{"type": "hub.ping"}')
            elif kind == "resume_storm":
                for _ in range(30):
                    await ws.send('{"type": "hub.resume", "last_id": 0}')
            async with asyncio.timeout(2):
                await _drain(ws)
        except (ConnectionClosed, TimeoutError):
            pass
        await ws.close()

    # Publishing and the database --------------------------------------------------

    async def publish(
        self,
        count: int,
        *,
        persist: bool,
        size: int,
        may_fail: bool = False,
        topic: str | None = None,
        at_once: bool = False,
    ):
        answer = await self.publishers.ask(
            {"op": "publish", "count": count, "persist": persist, "size": size, "topic": topic,
             "at_once": at_once}
        )  # fmt: skip
        if answer["failures"] and not may_fail:
            self.fail(f"{answer['failures']} of {count} publishes failed with every service up")
        return answer["ids"]

    async def newest_id(self) -> int:
        return (await self.publishers.ask({"op": "newest"}))["newest"]

    async def await_redis(self) -> None:
        await asyncio.sleep(0.5)

    # The end of a sequence -----------------------------------------------------------

    async def check_end(self, servers: list[Server], killed_publishers: int) -> None:
        await self.check_step()
        (marker,) = await self.publish(1, persist=True, size=1)
        deadline = time.monotonic() + SETTLE_SECONDS
        while any(c.last_seen < marker for c in self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        rows = (await self.publishers.ask({"op": "rows"}))["rows"]
        delivered = {
            seq: topic or None
            for seq, status, _, topic in rows
            if seq is not None and status == "sent"
        }
        for client in self.clients:
            if client.last_seen < marker:
                raise Violation(
                    f"a client is stuck at id {client.last_seen}; the newest is {marker} "
                    f"({client.server.kind}:{client.server.port}, {client.reconnects} reconnects)"
                )
            for after, before in client.gaps:
                excused = any(lo <= after and before - 1 <= hi for lo, hi in client.resets)
                lost = sorted(
                    i
                    for i in range(after + 1, before)
                    if i in delivered and client.owes(i, delivered[i])
                )
                if lost and not excused:
                    raise Violation(
                        f"a client never got sent id(s) {lost[:10]} (between {after} and "
                        f"{before}; it connected with {client.query!r} from id {client.start}, "
                        f"{client.reconnects} reconnects, resets {client.resets})\n    "
                        + "\n    ".join(client.history[:80])
                    )
        pending = [row for row in rows if row[1] == "pending" and row[2] != "killed.publisher"]
        if pending:
            raise Violation(f"{len(pending)} row(s) stayed pending: {pending[:5]}")
        await self.close_all()
        for server in servers:
            await _wait_for_zero_connections(server)
        await self._wait_for_zero_live_total()
        for server in servers:
            fault = LOG_FAULTS.search(KNOWN_LOG_BLOCKS.sub("", server.log()))
            if fault:
                raise Violation(f"{server.kind}:{server.port} logged {fault.group(0)!r}")
            before = self.baseline_rss.get(server.process.pid)
            if before is not None and _rss(server.process.pid) - before > MEMORY_GROWTH_LIMIT:
                grown = (_rss(server.process.pid) - before) // 2**20
                raise Violation(f"{server.kind}:{server.port} grew by {grown} MiB")

    async def _wait_for_zero_live_total(self) -> None:
        """The count rows (the admin's and hubstatus's live total) follow the clients out."""
        deadline = time.monotonic() + SETTLE_SECONDS
        total = None
        while time.monotonic() < deadline:
            total = (await self.publishers.ask({"op": "live_total"}))["live_total"]
            if total == 0:
                return
            await asyncio.sleep(0.3)
        raise Violation(f"the live total stayed {total} after every client left")


def _send_invalid_utf8(port: int) -> None:
    """A text frame that is not UTF-8, which no client library will send."""
    sock = stuck_client(port)
    payload, mask = b"\xff\xfe\xfd", b"\x01\x02\x03\x04"
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    sock.sendall(bytes((0x81, 0x80 | len(payload))) + mask + masked)
    sock.settimeout(3)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()


async def _drain(ws) -> None:
    async for _ in ws:
        pass


async def _wait_for_zero_connections(server: Server) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    value = None
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(_get, server.http + "/metrics")
        match = re.search(r"^broadcast_connections ([0-9.e+-]+)$", text, re.MULTILINE)
        value = float(match.group(1)) if match else None
        if value == 0:
            return
        await asyncio.sleep(0.2)
    raise Violation(f"{server.kind}:{server.port} still counts {value} connections after all left")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


__all__ = ["Client", "Oracle", "Violation", "os"]
