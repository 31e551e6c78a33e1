"""
The fault sequencer: seeded random sequences of operations against real server
processes (two at once, sharing a private Redis and a database), with an oracle that
checks every client after every step.

A sequence is a list of operations with concrete arguments drawn from the seed, so
a failing sequence can be run again, and shrunk, without the seed's randomness.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faults.access import HOW, USERS, AccessOps
from faults.oracle import Oracle, Violation
from harness.clients import Browser, get_json, stuck_client
from harness.redis import PrivateRedis
from harness.servers import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    HARNESS_APP,
    ROOT,
    Server,
    Site,
    free_port,
)
from harness.tcpproxy import TcpProxy

# Operation name -> weight. Connects and publishes dominate, as in production.
# Topics clients subscribe to and broadcasts go to; None is the global stream.
TOPICS = ("t0", "t1", "t2")
TOPIC_CHOICES = ((), (), ("t0",), ("t1", "t2"), TOPICS)

# How long a published broadcast may take to reach a client, and /healthz may report a
# relay restarting (after a Redis restart, say), before either counts as a fault; a
# channel layer reported down with Redis up never may.
HEALTH_SETTLE_SECONDS = 5.0
# BROADCAST_SHUTDOWN_TIMEOUT (10 s) bounds the paced shutdown; the server's own follows.
STOP_SECONDS = 20.0
# The longest a stall holds a server stopped: well under SQLite's busy timeout (20 s).
STALL_SECONDS = 2.0

WEIGHTS = {
    "connect": 14,
    "resume": 6,
    "subscribe": 5,
    "burst": 2,
    "disconnect": 8,
    "disconnect_all": 2,
    "publish": 14,
    "publish_ephemeral": 5,
    "publish_large": 3,
    "publish_concurrent": 3,
    "publish_admin": 2,
    "stuck_client": 2,
    "healthz": 3,
    "hostile": 5,
    "redis_pause": 1,
    "redis_restart": 1,
    "kill_publisher": 1,
    "server_restart": 1,
    "server_kill": 1,
    "server_stall": 2,
    # With PostgreSQL: each server reaches it through a proxy of its own (a failover,
    # a database too busy to answer, a lock held); with SQLite these do nothing.
    "db_cut": 2,
    "db_slow": 1,
    "db_lock": 1,
    # Clients that connect as users, and their access taken back (faults/access.py).
    "connect_user": 4,
    "revoke": 2,
}
# The longest a database fault lasts: under the relay's hold (10 s) and the publishers'
# send-lock wait, so that what it holds is filled, never reset.
DB_FAULT_SECONDS = 4.0


async def to_thread_to_the_end(function: Callable[[], Any]) -> Any:
    """
    ``asyncio.to_thread(function)``, which cancelling does not cut short: the server or
    Redis it starts must exist before a stopped run stops it, or it would outlive it.
    """
    started = asyncio.ensure_future(asyncio.to_thread(function))
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        await asyncio.wait([started])
        raise


def raise_if_cancelled() -> None:
    """
    Raise the cancel a SIGTERM asked for, if something swallowed it: on Python 3.11,
    ``asyncio.wait_for`` returns its result when what it waits on finishes as its task
    is cancelled, and the run would otherwise go on to its end.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass
class Op:
    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"


def generate(seed: int, count: int) -> list[Op]:
    """``count`` operations drawn from ``seed``: the same seed, the same sequence."""
    rng = random.Random(seed)
    names, weights = zip(*WEIGHTS.items(), strict=True)
    ops = []
    for _ in range(count):
        name = rng.choices(names, weights)[0]
        args: dict[str, Any] = {"server": rng.randrange(2), "seed": rng.randrange(2**31)}
        if name == "connect":
            args["count"] = rng.randint(1, 4)
            args["topics"] = rng.choice(TOPIC_CHOICES)
        elif name == "resume":
            args["last_id"] = rng.choice(["zero", "current", "behind", "beyond", "garbage"])
            args["topics"] = rng.choice(TOPIC_CHOICES)
        elif name == "subscribe":
            args["topic"] = rng.choice(TOPICS)
            args["unsubscribe"] = rng.random() < 0.3
        elif name == "burst":
            args["count"] = rng.randint(50, 200)
        elif name.startswith("publish") or name == "healthz":
            args["count"] = rng.randint(1, 30)
            if name in ("publish", "publish_ephemeral", "publish_concurrent"):
                args["topic"] = rng.choice((None, None, *TOPICS))
        elif name == "hostile":
            args["kind"] = rng.choice(
                ["nested", "invalid_utf8", "oversize", "binary", "flood", "resume_storm", "refused"]
            )
        elif name == "server_stall":
            args["count"] = rng.randint(5, 60)
            args["topic"] = rng.choice((None, None, *TOPICS))
        elif name == "server_restart":
            args["signal"] = "SIGTERM"
        elif name == "connect_user":
            args["user"] = rng.choice(USERS)
            args["count"] = rng.randint(1, 3)
        elif name == "revoke":
            args["user"] = rng.choice(USERS)
            args["how"] = rng.choice(HOW)
        elif name.startswith("db_"):
            args["count"] = rng.randint(1, 10)
            args["topic"] = rng.choice((None, None, *TOPICS))
        ops.append(Op(name, args))
    return ops


class Run(AccessOps):
    """One sequence against two fresh server processes of one kind."""

    def __init__(self, kind: str, site: Site, redis: PrivateRedis, log=print) -> None:
        self.kind = kind
        self.site = site
        self.redis = redis
        self.log = log
        self.servers: list[Server] = []
        self.oracle = Oracle(site)
        self.stuck: list[socket.socket] = []
        self.killed_publishers = 0
        # Each server's own way to its database, when that is PostgreSQL.
        self.proxies: dict[int, TcpProxy] = {}

    async def start(self) -> None:
        for _ in range(2):
            site, proxy = _through_a_proxy(self.site)
            server = Server(site, self.kind, app=HARNESS_APP)
            if proxy is not None:
                self.proxies[id(server)] = proxy
            self.servers.append(server)  # before it starts: a stopped run stops it too
            await to_thread_to_the_end(server.start)

    async def stop(self) -> None:
        # Everything at once, each part bounded: a stopped run must end well within a
        # minute, however many clients and publishers it had in flight.
        await self.oracle.close_all()
        for sock in self.stuck:
            sock.close()
        await asyncio.gather(
            asyncio.to_thread(self.oracle.stop),
            *(asyncio.to_thread(server.stop) for server in self.servers),
        )
        for proxy in self.proxies.values():
            proxy.close()

    async def step(self, op: Op) -> None:
        rng = random.Random(op.args["seed"])
        server = self.servers[op.args["server"]]
        await getattr(self, f"op_{op.name}")(server, rng, **_extra(op.args))
        await self.oracle.check_step()

    # Operations ---------------------------------------------------------------

    async def op_connect(
        self, server: Server, rng: random.Random, count: int, topics: tuple[str, ...] = ()
    ) -> None:
        for _ in range(count):
            await self.oracle.connect(server, topics=topics)

    async def op_subscribe(
        self, server: Server, rng: random.Random, topic: str, unsubscribe: bool
    ) -> None:
        mine = [client for client in self.oracle.clients if client.server is server]
        if mine:
            await self.oracle.subscribe(rng.choice(mine), topic, unsubscribe=unsubscribe)

    async def op_resume(
        self, server: Server, rng: random.Random, last_id: str, topics: tuple[str, ...] = ()
    ) -> None:
        newest = await self.oracle.newest_id()
        value = {
            "zero": "0",
            "current": str(newest),
            "behind": str(max(0, newest - rng.randint(1, 40))),
            "beyond": str(newest + 1000),
            "garbage": "x1",
        }[last_id]
        await self.oracle.connect(server, f"?last_id={value}", topics=topics)

    async def op_burst(self, server: Server, rng: random.Random, count: int) -> None:
        clients = await asyncio.gather(
            *(self.oracle.connect(server, track=False) for _ in range(count))
        )
        await asyncio.sleep(rng.random() * 0.5)
        await asyncio.gather(*(client.close() for client in clients if client))

    async def op_disconnect(self, server: Server, rng: random.Random) -> None:
        mine = [client for client in self.oracle.clients if client.server is server]
        for client in rng.sample(mine, k=min(len(mine), rng.randint(1, 3))):
            await self.oracle.disconnect(client)

    async def op_disconnect_all(self, server: Server, rng: random.Random) -> None:
        for client in [c for c in self.oracle.clients if c.server is server]:
            await self.oracle.disconnect(client)

    async def op_publish(
        self, server: Server, rng: random.Random, count: int, topic: str | None = None
    ) -> None:
        await self.oracle.publish(count, persist=True, size=rng.randint(1, 500), topic=topic)

    async def op_publish_ephemeral(
        self, server: Server, rng: random.Random, count: int, topic: str | None = None
    ) -> None:
        # Issued together, half the time: one process's publishes leave in one pipeline.
        at_once, size = rng.random() < 0.5, rng.randint(1, 500)
        await self.oracle.publish(count, persist=False, size=size, topic=topic, at_once=at_once)

    async def op_server_stall(
        self, server: Server, rng: random.Random, count: int, topic: str | None = None
    ) -> None:
        # The process stops (a long pause, a starved CPU) while broadcasts are
        # published: its relay finds them all waiting, and coalesces them. It resumes
        # after STALL_SECONDS at most, done or not: stopped holding SQLite's write lock,
        # it would keep the publisher waiting until that one gives up.
        persist, size = rng.random() < 0.5, rng.randint(1, 2000)
        publishing = asyncio.ensure_future(
            self.oracle.publish(count, persist=persist, size=size, topic=topic)
        )
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            await asyncio.wait([publishing], timeout=STALL_SECONDS)
            if publishing.done():
                await asyncio.sleep(rng.random() * 0.5)
        except BaseException:
            publishing.cancel()
            raise
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        await publishing

    async def op_publish_large(self, server: Server, rng: random.Random, count: int) -> None:
        await self.oracle.publish(min(count, 10), persist=rng.random() < 0.7, size=50_000)

    async def op_publish_concurrent(
        self, server: Server, rng: random.Random, count: int, topic: str | None = None
    ) -> None:
        topics = (topic, None, rng.choice(TOPICS))  # the global stream and topics interleaved
        await asyncio.gather(
            *(self.oracle.publish(count, persist=True, size=10, topic=t) for t in topics)
        )

    async def op_publish_admin(self, server: Server, rng: random.Random, count: int) -> None:
        """Inside the server: a staff user saves broadcasts in the admin."""
        await asyncio.to_thread(_admin_publish, server, min(count, 5))

    async def op_healthz(self, server: Server, rng: random.Random, count: int) -> None:
        """
        /healthz, whose round trip shares the relay's queue in Redis, asked the moment
        a client has a broadcast: as that relay goes back to Redis for more.
        """
        ws = await server.client()
        try:
            for _ in range(min(count, 5)):
                arrived = asyncio.Event()
                checking = asyncio.ensure_future(self._healthy_on_arrival(ws, server, arrived))
                try:
                    # Persisted: one lost in the layer (just after a Redis restart, on the
                    # pub/sub layer) still comes, from the database; an ephemeral one may
                    # not. A publish may wait for a killed publisher's send lock to expire:
                    # the time allowed runs from its return.
                    await self.oracle.publish(1, persist=True, size=10)
                    try:
                        async with asyncio.timeout(HEALTH_SETTLE_SECONDS):
                            await arrived.wait()
                    except TimeoutError:
                        if checking.done():
                            checking.result()  # what ended it early
                        raise Violation(
                            f"a client of {server.kind} got no broadcast within "
                            f"{HEALTH_SETTLE_SECONDS}s of its publish"
                        ) from None
                    await checking
                finally:
                    checking.cancel()
        finally:
            await ws.close()

    async def _healthy_on_arrival(self, ws: Any, server: Server, arrived: asyncio.Event) -> None:
        while json.loads(await ws.recv())["type"].startswith("hub."):
            pass  # the hub's own frames
        arrived.set()
        await self._healthy(server)

    async def _healthy(self, server: Server) -> None:
        deadline = time.monotonic() + HEALTH_SETTLE_SECONDS
        while True:
            status, body = await asyncio.to_thread(get_json, server.http + "/healthz")
            if status == 200:
                return
            if not body.get("channel_layer", {}).get("ok") or time.monotonic() > deadline:
                raise Violation(f"/healthz of {server.kind} answered {status}, Redis up: {body}")
            await asyncio.sleep(0.2)

    async def op_stuck_client(self, server: Server, rng: random.Random) -> None:
        self.stuck.append(await asyncio.to_thread(stuck_client, server.port))

    async def op_hostile(self, server: Server, rng: random.Random, kind: str) -> None:
        await self.oracle.hostile(server, kind)

    async def op_redis_pause(self, server: Server, rng: random.Random) -> None:
        client = self.redis_client()
        await asyncio.to_thread(client.execute_command, "CLIENT", "PAUSE", 1500, "WRITE")
        await self.oracle.publish(3, persist=True, size=10, may_fail=True)

    async def op_redis_restart(self, server: Server, rng: random.Random) -> None:
        await asyncio.to_thread(self.redis.stop)
        await self.oracle.publish(2, persist=True, size=10, may_fail=True)
        await asyncio.sleep(rng.random())
        await to_thread_to_the_end(self.redis.start)
        await self.oracle.await_redis()

    async def op_kill_publisher(self, server: Server, rng: random.Random) -> None:
        code = (
            "from broadcast import publish\n"
            "for n in range(1000):\n    publish('killed.publisher', n)\n"
        )
        process = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", code],
            cwd=ROOT, env=self.site.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await asyncio.sleep(1.0 + rng.random())
        finally:  # also when the run is stopped meanwhile
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait)
        self.killed_publishers += 1

    async def op_server_restart(self, server: Server, rng: random.Random, signal: str) -> None:
        await self.oracle.server_going(server, close_code=1012)  # the paced shutdown
        server.process.terminate()
        try:
            await asyncio.to_thread(server.process.wait, STOP_SECONDS)
        except subprocess.TimeoutExpired:
            await asyncio.to_thread(server.stop)  # killed, so that the run can go on
            raise Violation(
                f"{server.kind} was still running {STOP_SECONDS}s after SIGTERM"
            ) from None
        await self._restart(server)

    async def op_server_kill(self, server: Server, rng: random.Random) -> None:
        await self.oracle.server_going(server)
        server.process.kill()
        await asyncio.to_thread(server.process.wait)
        await self._restart(server)

    async def _restart(self, server: Server) -> None:
        server.port = free_port()
        await to_thread_to_the_end(server.start)
        await self.oracle.server_back(server)

    async def op_db_cut(
        self, server: Server, rng: random.Random, count: int, topic: str | None = None
    ) -> None:
        """
        The server's database goes away (a failover) while broadcasts are published,
        one of them lost in the layer first, so that its relay meets a gap it cannot
        fill yet; and a client resumes there meanwhile. Then the database is back.
        """
        proxy = self.proxies.get(id(server))
        if proxy is None:
            return
        if self.redis_layer_is_core():
            await asyncio.to_thread(self.publish_lost_in_the_layer)
        proxy.cut()
        resuming: asyncio.Future[Any] | None = None
        try:
            await self.oracle.publish(count, persist=True, size=rng.randint(1, 500), topic=topic)
            behind = max(0, await self.oracle.newest_id() - rng.randint(1, 20))
            # It is told to try again later, and is served once the database is back.
            resuming = asyncio.ensure_future(self.oracle.connect(server, f"?last_id={behind}"))
            await asyncio.sleep(rng.uniform(0.2, DB_FAULT_SECONDS))
        finally:
            proxy.restore()
        if resuming is not None:
            await resuming

    async def op_db_slow(
        self, server: Server, rng: random.Random, count: int, topic: str | None = None
    ) -> None:
        """The server's database answers slowly while broadcasts are published."""
        proxy = self.proxies.get(id(server))
        if proxy is None:
            return
        proxy.slow(rng.uniform(0.02, 0.3))
        try:
            await self.oracle.publish(count, persist=True, size=rng.randint(1, 500), topic=topic)
            await asyncio.sleep(rng.uniform(0.2, DB_FAULT_SECONDS / 2))
        finally:
            proxy.restore()

    async def op_db_lock(
        self, server: Server, rng: random.Random, count: int, topic: str | None = None
    ) -> None:
        """The broadcasts table is locked (a migration, a long report) while they are published."""
        if not self.proxies:
            return
        held = rng.uniform(0.2, DB_FAULT_SECONDS / 2)
        locking = asyncio.ensure_future(asyncio.to_thread(_lock_broadcasts, self.site, held))
        await asyncio.sleep(0.05)
        await self.oracle.publish(count, persist=True, size=10, topic=topic, may_fail=True)
        await locking

    def redis_layer_is_core(self) -> bool:
        return self.site.env.get("REDIS_LAYER", "core") == "core"

    def publish_lost_in_the_layer(self) -> None:
        """A persisted broadcast, with its id, that reaches no relay: sent on another database."""
        elsewhere = self.redis.url.rsplit("/", 1)[0] + "/1"
        self.site.with_redis(elsewhere).manage("broadcast", "fault.lost", "{}")

    def redis_client(self):
        import redis

        return redis.Redis.from_url(self.redis.url)


def _admin_publish(server: Server, count: int) -> None:
    browser = Browser(server.http)
    browser.login(ADMIN_USER, ADMIN_PASSWORD)
    for n in range(count):
        status, _ = browser.post(
            "/admin/broadcast/broadcast/add/", {"type": "fault.admin", "payload": f'{{"n": {n}}}'}
        )
        if status != 200:  # the admin redirects, and the opener follows to the list
            raise Violation(f"saving a broadcast in the admin answered {status}")


def _extra(args: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in args.items() if key not in {"server", "seed"}}


async def run_sequence(
    kind: str, ops: list[Op], site: Site, log=print
) -> tuple[int, Violation | None]:
    """Run ``ops`` on fresh servers; (operations done, the first violation or None)."""
    redis = PrivateRedis()
    redis.start()
    run_site = site.with_redis(redis.url).with_env(BROADCAST_MAX_PENDING_BYTES=str(256 * 1024))
    run = Run(kind, run_site, redis, log)
    done = 0
    try:
        await run.start()
        await run.oracle.baseline(run.servers)
        for done, op in enumerate(ops, 1):
            raise_if_cancelled()
            log(f"  {done:4d} {op}")
            await run.step(op)
        for sock in run.stuck:  # stuck clients leave too: counts must return to zero
            sock.close()
        run.stuck.clear()
        await run.oracle.check_end(run.servers, run.killed_publishers)
        return done, None
    except Violation as violation:
        violation.logs = [server.log() for server in run.servers]
        return done, violation
    finally:
        await run.stop()
        if redis.process.poll() is None:
            redis.stop()


async def shrink(kind: str, ops: list[Op], site: Site, budget: float, log=print) -> list[Op]:
    """The shortest sequence (by removing chunks, then single ops) that still fails."""
    deadline = time.monotonic() + budget
    quiet = lambda *args: None  # noqa: E731
    chunk = max(1, len(ops) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        index, shrunk = 0, False
        while index < len(ops) and time.monotonic() < deadline:
            raise_if_cancelled()
            candidate = ops[:index] + ops[index + chunk :]
            if candidate:
                _, violation = await run_sequence(kind, candidate, site, quiet)
                if violation is not None:
                    ops, shrunk = candidate, True
                    log(f"  shrunk to {len(ops)} operations")
                    continue
            index += chunk
        if not shrunk:
            chunk //= 2
    return ops


def _through_a_proxy(site: Site) -> tuple[Site, TcpProxy | None]:
    """``site`` as one server reaches it: PostgreSQL through a proxy of its own."""
    url = site.env.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return site, None
    parts = urllib.parse.urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    user = f"{parts.username}@" if parts.username else ""
    proxied = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
    return site.with_env(DATABASE_URL=proxied), proxy


def _lock_broadcasts(site: Site, seconds: float) -> None:
    """Hold an exclusive lock on the broadcasts table for ``seconds``."""
    import psycopg

    with psycopg.connect(site.env["DATABASE_URL"]) as conn:
        conn.execute("LOCK TABLE broadcast_broadcast IN ACCESS EXCLUSIVE MODE")
        time.sleep(seconds)
