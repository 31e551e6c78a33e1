"""
One load-client process: opens its share of WebSocket clients and records, per
delivery, receive time minus the publish time carried in the payload.

It speaks just enough RFC 6455 for a receiver (a handshake, unmasked server frames)
on uvloop, and reads ``"t":`` without decoding JSON, so that it is not the
bottleneck. The orchestrator (bench/run.py) drives it over stdin/stdout:

    stdout: {"event": "progress", "connected": k}... {"event": "ready", ...}
    stdin:  "drain SECONDS"  (publishing is over; wait at most this long)
    stdout: {"event": "result", ...} and the latencies in the file given on argv

    python -m bench.loadclient HOST PORT COUNT EXPECTED OUT [TOPICS FIRST]

With TOPICS, client j subscribes to topic ``t{(FIRST + j) % TOPICS}`` on connect.
EXPECTED 0 makes clients that are owed nothing (any delivery to them is counted).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from array import array

try:
    import uvloop
except ImportError:  # pragma: no cover - the benchmark still runs, slower
    uvloop = None

T_MARK = b'"t":'


class Stats:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.latencies = array("d")
        self.delivered = 0
        self.welcomed = 0
        self.complete = 0
        self.closed_early = 0
        self.close_codes: dict[int, int] = {}
        self.last_receive = 0.0
        self.all_done = asyncio.Event()
        self.clients = 0


class Client(asyncio.Protocol):
    def __init__(self, stats: Stats, request: bytes, opened: asyncio.Future) -> None:
        self.stats = stats
        self.request = request
        self.opened = opened
        self.buffer = bytearray()
        self.upgraded = False
        self.received = 0
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc}"))
        elif self.received < self.stats.expected:
            self.stats.closed_early += 1

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                self.transport.close()
                return
            del buffer[: end + 4]
            self.upgraded = True
        position, size = 0, len(buffer)
        stats = self.stats
        while size - position >= 2:
            second = buffer[position + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(buffer[position + 2 : position + 4], "big")
                header = 4
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(buffer[position + 2 : position + 10], "big")
                header = 10
            start = position + header
            end = start + length
            if end > size:
                break
            opcode = buffer[position] & 0x0F
            if opcode == 1:
                mark = buffer.find(T_MARK, start, end)
                if mark < 0:
                    if not self.opened.done():  # the welcome frame: registered
                        stats.welcomed += 1
                        self.opened.set_result(None)
                else:
                    stop = mark + 4
                    while buffer[stop] not in b",}":
                        stop += 1
                    stats.latencies.append(now - float(buffer[mark + 4 : stop]))
                    stats.delivered += 1
                    self.received += 1
                    if self.received == stats.expected:
                        stats.complete += 1
                        if stats.complete == stats.clients:
                            stats.all_done.set()
            elif opcode == 8:
                code = int.from_bytes(buffer[start : start + 2], "big") if length >= 2 else 1005
                stats.close_codes[code] = stats.close_codes.get(code, 0) + 1
            position = end
        if position:
            del buffer[:position]
        stats.last_receive = now


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def main(
    host: str,
    port: int,
    count: int,
    expected: int,
    out_path: str,
    topics: int = 0,
    first: int = 0,
) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats(expected)
    stats.clients = count
    key = base64.b64encode(os.urandom(16)).decode()

    def handshake(path: str) -> bytes:
        return (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://{host}:{port}\r\n\r\n"
        ).encode()

    plain = handshake("/ws/broadcast/")  # built once: the load client is not what is measured

    def request_for(number: int) -> bytes:
        if not topics:
            return plain
        return handshake(f"/ws/broadcast/?topics=t{(first + number) % topics}")

    gate = asyncio.Semaphore(200)  # connects in flight at once
    failures: list[str] = []
    transports = []

    async def open_one(number: int) -> None:
        async with gate:
            opened = loop.create_future()
            request = request_for(number)
            try:
                transport, _ = await loop.create_connection(
                    lambda: Client(stats, request, opened), host, port
                )
                transports.append(transport)
                await asyncio.wait_for(opened, 30)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    async def report_progress() -> None:
        while True:
            await asyncio.sleep(0.5)
            emit({"event": "progress", "connected": stats.welcomed})

    started = time.monotonic()
    reporter = asyncio.ensure_future(report_progress())
    await asyncio.gather(*(open_one(number) for number in range(count)))
    reporter.cancel()
    emit(
        {
            "event": "ready",
            "connected": stats.welcomed,
            "seconds": time.monotonic() - started,
            "failures": failures[:5],
            "failed": len(failures),
        }
    )
    line = await loop.run_in_executor(None, sys.stdin.readline)
    drain = float(line.split()[1]) if line.startswith("drain") else 10.0
    if expected and stats.welcomed:
        stats.clients = stats.welcomed
        if stats.complete < stats.clients:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stats.all_done.wait(), drain)
    with open(out_path, "wb") as handle:
        stats.latencies.tofile(handle)
    emit(
        {
            "event": "result",
            "delivered": stats.delivered,
            "complete_clients": stats.complete,
            "closed_early": stats.closed_early,
            "close_codes": stats.close_codes,
            "last_receive": stats.last_receive,
        }
    )
    for transport in transports:
        transport.abort()


if __name__ == "__main__":
    host, port, count, expected, out_path = sys.argv[1:6]
    topics, first = (int(sys.argv[6]), int(sys.argv[7])) if len(sys.argv) > 7 else (0, 0)
    runner = uvloop.run if uvloop else asyncio.run
    runner(main(host, int(port), int(count), int(expected), out_path, topics, first))
