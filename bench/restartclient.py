"""
Scenario R's helper processes, one a role, driven by bench/restart.py:

    restartclient.py hold PORT COUNT RESUME_PORT SPREAD LATENCIES|-
    restartclient.py fresh PORT COUNT 0 SPREAD -
    restartclient.py publish RATE

``hold`` clients keep every broadcast id they get; closed by their server, each waits a
uniform 0..SPREAD s (as broadcast.js does) and resumes on RESUME_PORT (0: never) with
``?last_id=``, retrying a refusal or a failed connect with broadcast.js's backoff; their
(receive time, latency from the payload's ``t``) pairs go to LATENCIES. ``fresh`` clients
connect once each after a uniform 0..SPREAD s wait. stdout: progress, "ready"; stdin:
"final DRAIN ID,..." (the ids owed; "result" answers), "quit". Run as a script: the tree
under test owns the ``bench`` package.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import os
import random
import sys
import time
from array import array

import django
import uvloop

BASE_DELAY, MAX_DELAY = 0.5, 30.0  # broadcast.js's backoff: its baseDelay and maxDelay
CONNECT_TIMEOUT = 30.0
HOST = "127.0.0.1"  # loopback: the servers' own, and the source ports' limit
COUNTS = ("welcomed", "lost", "done", "resets", "attempts", "retries", "replayed")


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Track:
    """One client across its connections: the ids it got, and when it moved."""

    def __init__(self) -> None:
        self.first: int | None = None  # the first welcome's last_id: owed every id after it
        self.position: int | None = None  # where broadcast.js would resume from
        self.ids = array("q")
        self.lost_at = self.attempt_at = self.done_at = 0.0
        self.outcome = ""  # resumed, reset or welcome (fresh): the storm is over for it
        self.transport: asyncio.BaseTransport | None = None


class Pool:
    """One process's clients, their tallies, and how they connect and move."""

    def __init__(self, role: str, port: int, resume_port: int, spread: float) -> None:
        self.role, self.port = role, port
        self.resume_port, self.spread = resume_port, spread
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.tracks: list[Track] = []
        self.latencies: array | None = None
        self.counts = dict.fromkeys(COUNTS, 0)
        self.close_codes: dict[int, int] = {}
        self.failures: dict[str, int] = {}  # why connects failed
        self.quitting = False
        self.moving: list[asyncio.Task] = []  # held: the loop keeps only weak references

    async def open(self, track: Track, port: int = 0, last_id: int | None = None) -> bool:
        """One connect (by default to this pool's port) until its welcome: False if it fails."""
        loop, port = asyncio.get_running_loop(), port or self.port
        opened = loop.create_future()
        track.attempt_at = time.time()
        query = "" if last_id is None else f"?last_id={last_id}"
        request = (
            f"GET /ws/broadcast/{query} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: http://{HOST}:{port}\r\n\r\n"
        ).encode()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):  # a browser waits on for the rest
                await loop.create_connection(lambda: Conn(self, track, request, opened), HOST, port)
            await opened
            return True
        except Exception as exc:  # refused, reset, timed out: all retried alike, and tallied
            reason = f"{type(exc).__name__}: {exc}"[:80]
            self.failures[reason] = self.failures.get(reason, 0) + 1
            # Off the track first, so that its connection_lost starts no second move.
            transport, track.transport = track.transport, None
            if transport is not None:
                transport.abort()
            return False

    async def move(self, track: Track, attempt: int = 0) -> None:
        """The storm's reconnect (or a fresh connect), retried with backoff until it holds."""
        # broadcast.js: a uniform wait up to base * 2^attempt, capped; SPREAD the first time.
        ceiling = self.spread if attempt == 0 else BASE_DELAY * 2**attempt
        while not self.quitting:
            await asyncio.sleep(random.uniform(0, min(MAX_DELAY, ceiling)))
            self.counts["attempts"] += 1
            if await self.open(track, self.resume_port, track.position):  # fresh: None
                return
            attempt += 1
            self.counts["retries"] += 1
            ceiling = BASE_DELAY * 2 ** min(attempt, 16)

    def lost(self, track: Track) -> None:
        if self.quitting or not self.resume_port:
            return
        track.transport = None
        # The first server's close (1012) starts the storm's own move; a close after the
        # welcome on the new server (1013, or any other code) is a retry.
        first, track.lost_at = not track.lost_at, track.lost_at or time.time()
        self.counts["lost" if first else "retries"] += 1
        self.moving.append(asyncio.ensure_future(self.move(track, 0 if first else 1)))

    def done(self, track: Track, outcome: str, now: float) -> None:
        if track.outcome:
            return
        track.outcome, track.done_at = outcome, now
        self.counts["done"] += 1
        self.counts["resets"] += outcome == "reset"
        if self.counts["done"] == len(self.tracks):
            emit({"event": "progress", **self.counts})  # the orchestrator's cue, at once


class Conn(asyncio.Protocol):
    """One connection: the server's RFC 6455 frames, read with as little work as may be."""

    def __init__(self, pool: Pool, track: Track, request: bytes, opened: asyncio.Future) -> None:
        self.pool, self.track, self.request, self.opened = pool, track, request, opened
        self.buffer = bytearray()
        self.upgraded = False
        self.code: int | None = None  # the close frame's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.track.transport = transport  # here, not after the await: it may close first
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the welcome ({self.code})"))
        elif self.track.transport is self.transport:
            self.pool.lost(self.track)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")]).decode(errors="replace")
            if " 101 " not in status:  # refused at the handshake: the opener retries
                self.opened.set_exception(ConnectionError(status))
                self.transport.close()
                return
            del buffer[: end + 4]
            self.upgraded = True
        position, size = 0, len(buffer)
        while size - position >= 2:
            length, header = buffer[position + 1] & 0x7F, 2
            if length >= 126:
                header = 4 if length == 126 else 10
                if size - position < header:
                    break
                length = int.from_bytes(buffer[position + 2 : position + header], "big")
            start, end = position + header, position + header + length
            if end > size:
                break
            opcode = buffer[position] & 0x0F
            if opcode == 1:
                self.text(buffer, start, end, now)
            elif opcode == 8:
                code = int.from_bytes(buffer[start : start + 2], "big") if length > 1 else 1005
                self.pool.close_codes[code] = self.pool.close_codes.get(code, 0) + 1
                self.code = code
                self.transport.close()
            elif opcode == 9:  # both servers ping, and drop a client that never answers
                pong = bytes(buffer[start:end])  # masked with a zero key: the same bytes
                self.transport.write(bytes([0x8A, 0x80 | len(pong)]) + b"\0\0\0\0" + pong)
            position = end
        del buffer[:position]

    def text(self, buffer: bytearray, start: int, end: int, now: float) -> None:
        track, pool = self.track, self.pool
        # An envelope opens with {"id":N, (protocol.build_text); a control frame's is null.
        if buffer[start + 6] != ord("n"):
            comma = buffer.find(b",", start + 6, end)
            msg_id = int(buffer[start + 6 : comma])
            track.ids.append(msg_id)
            if track.position is None or msg_id > track.position:
                track.position = msg_id
            if pool.latencies is not None:
                mark = buffer.find(b'"t":', comma, end) + 4  # the payload's last key: {"n":N,"t":T}
                pool.latencies.extend((now, now - float(buffer[mark : buffer.find(b"}", mark)])))
            return
        frame = json.loads(bytes(buffer[start:end]))
        kind, payload = frame["type"], frame["payload"]
        if kind == "hub.welcome":
            if track.first is None:  # its first connection: owed every id after this one
                track.first = track.position = payload["last_id"]
                pool.counts["welcomed"] += 1
            self.opened.set_result(None)  # once a connection: its first frame
            if pool.role == "fresh":
                pool.done(track, "welcome", now)
        elif kind in ("hub.resumed", "hub.reset"):
            track.position = max(track.position or 0, payload["last_id"])
            pool.counts["replayed"] += payload.get("count", 0)
            pool.done(track, kind[4:], now)


async def final(pool: Pool, drain: float, ids: list[int]) -> None:
    """Wait (``drain`` s at most) for the last id, then tell what each client missed or
    got twice: it is owed every id of ``ids`` after its first welcome's last_id."""
    deadline, last = time.monotonic() + drain, ids[-1] if ids else 0
    while time.monotonic() < deadline and min(t.position or 0 for t in pool.tracks) < last:
        await asyncio.sleep(0.1)
    owed_after: dict[int | None, set[int]] = {}
    tally = dict.fromkeys(("missed", "repeated", "incomplete"), 0)
    for track in pool.tracks:
        if track.first not in owed_after:
            owed_after[track.first] = set(ids[bisect.bisect_right(ids, track.first or 0) :])
        owed, got = owed_after[track.first], set(track.ids)
        tally["repeated"] += len(track.ids) - len(got)
        tally["missed"] += len(owed - got)
        tally["incomplete"] += (track.position or 0) < last
    moved = [track for track in pool.tracks if track.outcome]
    emit({"event": "result", **pool.counts, **tally, "close_codes": pool.close_codes,
          "failures": pool.failures,
          "lost_times": [round(t.lost_at, 4) for t in pool.tracks if t.lost_at],
          "done_times": [round(t.done_at, 4) for t in moved],
          "resume_waits": [round(t.done_at - t.attempt_at, 4) for t in moved]})  # fmt: skip


async def clients(argv: list[str]) -> None:
    role, port, count, resume_port, spread, out = argv
    loop = asyncio.get_running_loop()
    pool = Pool(role, int(port), int(resume_port), float(spread))
    pool.tracks = [Track() for _ in range(int(count))]
    pool.latencies = None if out == "-" else array("d")
    started = time.time()

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            emit({"event": "progress", **pool.counts})

    reporter = asyncio.ensure_future(report())
    if role == "fresh":
        await asyncio.gather(*(pool.move(track) for track in pool.tracks))
    else:
        for at in range(0, len(pool.tracks), 200):  # 200 at a time: setting up is not measured
            await asyncio.gather(*(pool.open(track) for track in pool.tracks[at : at + 200]))
        pool.tracks = [track for track in pool.tracks if track.first is not None]
    last = max((track.done_at for track in pool.tracks), default=started)
    emit({"event": "ready", "connected": len(pool.tracks), "started": started, "last": last,
          "failures": pool.failures, **pool.counts})  # fmt: skip
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        if line[0] == "final":
            await final(pool, float(line[1]), [int(i) for ids in line[2:] for i in ids.split(",")])
    pool.quitting = True
    reporter.cancel()
    for track in pool.tracks:
        if track.transport is not None:
            track.transport.abort()
    if pool.latencies is not None:
        with open(out, "wb") as handle:
            pool.latencies.tofile(handle)


async def publish(rate: float) -> None:
    """Persisted broadcasts with bench/publisher.py's payload at ``rate`` a second until a
    line on stdin: it stops between two publishes, never inside one as a signal could."""
    django.setup()
    from broadcast import apublish

    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.readline)
    start, number = loop.time(), 0
    while not stop.done():
        await asyncio.wait([stop], timeout=start + number / rate - loop.time())
        if not stop.done():
            await apublish("bench", {"n": number, "t": time.time()}, persist=True)
            number += 1


if __name__ == "__main__":
    if sys.argv[1] == "publish":  # cwd and PYTHONPATH: the tree under test
        asyncio.run(publish(float(sys.argv[2])))
    else:
        uvloop.run(clients(sys.argv[1:7]))
