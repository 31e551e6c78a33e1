"""
What a server process costs at rest: the CPU a second of each process of a server
(uvicorn's ``--workers`` supervisor and its workers, or each daphne process) with a few
clients connected and nothing sent, on the scheduler's clock.

    python -m bench.idle                            # hub and raw, both servers, 1 and 2 processes
    python -m bench.idle --servers uvicorn --apps hub,raw --procs 1,2 --seconds 20 --rounds 3

A second process on a host adds this whatever its share of the work, so it is what
keeps two processes' CPU per delivery above one's at light load (docs/benchmarks.md).
The raw app (no channel layer, no database) is the server's own share of it; the hub's
is what is left. Few clients, so that no round of WebSocket pings falls in one window
and not another; runs are interleaved and each figure is the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets

from bench.run import (
    APP_ENV,
    ROOT,
    descendants,
    free_port,
    print_report,
    print_result,
    server_command,
    site_env,
    stop_on_sigterm,
    wait_until_serving,
)


def cpu_ns(pid: int) -> int:
    """CPU nanoseconds of one process, all its threads, from the scheduler's clock."""
    return sum(
        int((task / "schedstat").read_text().split()[0])
        for task in Path(f"/proc/{pid}/task").iterdir()
    )


async def connected(ports: list[int], count: int) -> list:
    """``count`` clients, spread over ``ports``, each welcomed."""
    clients = []
    for index in range(count):
        url = f"ws://127.0.0.1:{ports[index % len(ports)]}/ws/broadcast/"
        client = await websockets.connect(url, origin="http://127.0.0.1")
        await client.recv()  # the welcome (the raw app's first frame)
        clients.append(client)
    return clients


def measure(server: str, app: str, procs: int, env: dict, seconds: float, clients: int) -> dict:
    """One server at rest: CPU ms a second of each of its processes."""
    env = {**env, **APP_ENV.get(app, {})}
    ports = [free_port() for _ in range(procs if server == "daphne" else 1)]
    workers = procs if server == "uvicorn" else 1
    helpers: set[int] = set()
    processes = [
        subprocess.Popen(server_command(server, app, port, workers), cwd=ROOT, env=env)
        for port in ports
    ]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_until_serving(port, process)
        time.sleep(2.0)  # uvicorn's workers start one by one

        async def at_rest() -> dict[int, float]:
            sockets = await connected(ports, clients)
            await asyncio.sleep(1.0)
            pids = [pid for process in processes for pid in descendants(process.pid)]
            helpers.update(
                pid
                for pid in pids
                if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
            )
            before = {pid: cpu_ns(pid) for pid in pids}
            await asyncio.sleep(seconds)
            spent = {pid: (cpu_ns(pid) - before[pid]) / 1e6 / seconds for pid in pids}
            for client in sockets:
                await client.close()
            return spent

        spent = asyncio.run(at_rest())
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)
    roots = {process.pid for process in processes}
    supervised = server == "uvicorn" and procs > 1
    # uvicorn's supervisor also starts multiprocessing's resource tracker: no server.
    kept = {pid: ms for pid, ms in spent.items() if pid not in helpers}
    return {
        "server": server,
        "app": app,
        "procs": procs,
        "total_ms_s": round(sum(spent.values()), 2),
        "supervisor_ms_s": round(sum(spent[pid] for pid in roots), 2) if supervised else None,
        "process_ms_s": sorted(
            round(ms, 2) for pid, ms in kept.items() if not (supervised and pid in roots)
        ),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| app@server | processes | ms/s in all: median (rounds) | each process | supervisor |",
        "| --- | --- | --- | --- | --- |",
    ]
    keys = dict.fromkeys((r["app"], r["server"], r["procs"]) for r in results)
    for app, server, procs in keys:
        mine = [r for r in results if (r["app"], r["server"], r["procs"]) == (app, server, procs)]
        totals = [r["total_ms_s"] for r in mine]
        each = sorted(ms for r in mine for ms in r["process_ms_s"])
        supervisor = [r["supervisor_ms_s"] for r in mine if r["supervisor_ms_s"] is not None]
        lines.append(
            f"| {app}@{server} | {procs} | {statistics.median(totals):.2f} "
            f"({', '.join(f'{t:.2f}' for t in totals)}) | {each[0]:.2f}-{each[-1]:.2f} | "
            + (f"{statistics.median(supervisor):.2f}" if supervisor else "-")
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="daphne,uvicorn")
    parser.add_argument("--apps", default="hub,raw")
    parser.add_argument("--procs", default="1,2", help="server processes, e.g. 1,2")
    parser.add_argument("--layer", choices=["redis", "redis-pubsub"], default="redis-pubsub")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--seconds", type=float, default=20.0, help="each measuring window")
    parser.add_argument("--clients", type=int, default=2, help="clients on each server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="also write all results to this file")
    args = parser.parse_args()
    stop_on_sigterm()
    if args.seconds <= 0 or args.rounds < 1 or args.clients < 1:
        parser.error("--seconds, --rounds and --clients must be positive")
    env = site_env(Path(tempfile.mkdtemp(prefix="hub-idle-")), args.layer, args.redis_url)
    results = []
    for round_number in range(1, args.rounds + 1):
        for server in args.servers.split(","):
            for procs in (int(n) for n in args.procs.split(",")):
                for app in args.apps.split(","):
                    label = f"{app}@{server} x{procs}, round {round_number}"
                    print(f"{label}: {args.seconds:g} s at rest", file=sys.stderr, flush=True)
                    result = measure(server, app, procs, env, args.seconds, args.clients)
                    result["round"] = round_number
                    results.append(result)
                    print_result(result)
    print_report(table(results), results, args.json)


if __name__ == "__main__":
    main()
