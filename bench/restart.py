"""
Scenario R, a deploy's reconnect storm: server processes A and B share Redis and a fresh
PostgreSQL database; A gets SIGTERM while persisted broadcasts go out, and its clients
resume on B. Trees (checkouts: manage.py, hubsite, bench.hubapp) run in turn, round
after round, to be compared within one run:

    python -m bench.restart --trees before=/tmp/r-before,after=. --servers uvicorn,daphne

Measured: the last 1012 (and the SIGTERM) to the last hub.resumed; resets, retries, ids
missed and repeated; B's original clients' latency before, during and after the storm
(after: B serving every client, the steady state the storm ends in); scans of
broadcast_broadcast during the storm (all, and beyond the publisher's own rate measured
before it: the resumes') and B's CPU per resume; and the baseline, as many fresh clients as A
had, spread alike, connecting to B after the drain until each has its welcome. A
``RESULT {...}`` line a run, then a table and each tree's ratios to the first.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from array import array
from collections.abc import Callable
from pathlib import Path

import psycopg

from bench import run

CLIENT = Path(__file__).resolve().with_name("restartclient.py")
TABLE = "broadcast_broadcast"
SCANS = (
    f"SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = '{TABLE}'"
)
OWED = f"SELECT seq FROM {TABLE} WHERE status = 'sent' AND seq IS NOT NULL ORDER BY seq"
COUNTS = ("welcomed", "lost", "done", "resets", "attempts", "retries", "replayed")


class Child:
    """One bench/restartclient.py process, and the newest line of each kind it wrote."""

    def __init__(self, args: list[object], cwd: Path, env: dict | None = None) -> None:
        command = [run.PY, str(CLIENT), *map(str, args)]
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        self.process = subprocess.Popen(command, cwd=cwd, env=env, **pipes)
        self.progress: dict = dict.fromkeys(COUNTS, 0)
        self.ready: dict | None = None
        self.result: dict | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:  # progress, ready or result: the newest of each
            event = json.loads(line)
            setattr(self, event["event"], event)

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()


def wait_for(
    phase: str, children: list[Child], done: Callable[[], bool], status: str, timeout: float
) -> bool:
    """Poll ``done``, showing ``status`` each second; False past ``timeout`` or a death."""
    deadline, shown = time.monotonic() + timeout, 0.0
    while not done():
        dead = sum(child.process.poll() is not None for child in children)
        now, left = time.monotonic(), status.format(**children[0].progress)
        if dead or now > deadline:
            why = f"{dead} helper(s) exited" if dead else f"timed out after {timeout:g} s"
            print(f"  {phase}: {why}; left: {left}", file=sys.stderr)
            return False
        if now - shown >= 1.0:
            print(f"  {phase}: {left}", file=sys.stderr)
            shown = now
        time.sleep(0.02)
    return True


def sql(url: str, statement: str) -> list[tuple]:  # a connection each: fresh stats
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def ms(values: list[float], fraction: float) -> float:
    return round(run.percentile(values, fraction) * 1000, 1)


def run_one(label: str, tree: Path, server: str, args: argparse.Namespace, env: dict) -> dict:
    database = f"hub_bench_r_{uuid.uuid4().hex[:10]}"  # a fresh one, dropped at the end
    sql(args.postgres_url, f'CREATE DATABASE "{database}"')
    url = urllib.parse.urlunsplit(urllib.parse.urlsplit(args.postgres_url)._replace(path=database))
    env = {**env, "DATABASE_URL": url, "PYTHONPATH": str(tree)}
    on_a = round(args.clients * args.a_share)
    out: dict = {"server": server, "clients": args.clients, "on_a": on_a}
    procs: list[subprocess.Popen] = []  # A, B, then every helper: all stopped at the end
    logs = args.work / f"{label}-{server}-{len(list(args.work.glob('*-B.log')))}"

    def spawn(command: list[str], name: str) -> subprocess.Popen:
        with Path(f"{logs}-{name}.log").open("a") as handle:  # the process keeps its own copy
            procs.append(subprocess.Popen(command, cwd=tree, env=env, stdout=handle, stderr=-2))
        return procs[-1]

    def start(*argv: object, tree_env: bool = False) -> Child:  # the publisher runs the tree
        child = Child(list(argv), tree if tree_env else args.work, env if tree_env else None)
        procs.append(child.process)
        return child

    try:
        subprocess.run([run.PY, "manage.py", "migrate", "-v", "0"], cwd=tree, env=env, check=True)
        redis = ["redis-cli", "-u", args.redis_url, "flushdb"]
        subprocess.run(redis, check=True, capture_output=True)
        ports = [run.free_port(), run.free_port()]
        a = spawn(run.server_command(server, "hub", ports[0]), "A")
        b = spawn(run.server_command(server, "hub", ports[1]), "B")
        for port, process in zip(ports, (a, b), strict=True):
            run.wait_until_serving(port, process)
        latencies = Path(f"{logs}-latencies.bin")  # a run's own: never an earlier one's
        mover = start("hold", ports[0], on_a, ports[1], args.spread, "-")
        stayer = start("hold", ports[1], args.clients - on_a, 0, 0, latencies)
        holders = [mover, stayer]
        if not wait_for("connect", holders, lambda: all(c.ready for c in holders),
                        "{welcomed} welcomed on A", args.phase_timeout):  # fmt: skip
            raise RuntimeError("the clients did not all connect")
        moving = mover.ready["connected"]
        out["connected"] = moving + stayer.ready["connected"]
        publisher = start("publish", args.rate, tree_env=True)
        time.sleep(2.0)  # Django's setup, and the first publishes
        pre_at, pre_scans = time.time(), sql(url, SCANS)[0][0]
        time.sleep(args.pre_seconds)
        before, cpu = sql(url, SCANS)[0][0], run.tree_stat([b.pid])[0]
        publishing = (before - pre_scans) / (time.time() - pre_at)  # its own scans a second
        term_at = time.time()
        a.send_signal(signal.SIGTERM)
        status = f"{{lost}}/{moving} closed by A, {{done}} resumed or reset, {{retries}} retries"
        calm = wait_for("storm", holders, lambda: mover.progress["done"] >= moving, status,
                        args.phase_timeout)  # fmt: skip
        cpu, calm_at = run.tree_stat([b.pid])[0] - cpu, time.time()
        time.sleep(max(args.stats_wait, args.post_seconds))  # counters flush lazily
        post_at = time.time()
        out["pg_scans"] = sql(url, SCANS)[0][0] - before
        out["pg_scans_resumes"] = max(0, round(out["pg_scans"] - publishing * (post_at - term_at)))
        publisher.send("stop")
        out["publisher_exit"] = publisher.process.wait(30)
        ids = ",".join(str(row[0]) for row in sql(url, OWED))
        for child in holders:
            child.send(f"final {args.drain} {ids}")
        if not wait_for("drain", holders, lambda: all(c.result for c in holders), "waiting",
                        args.drain + 30):  # fmt: skip
            raise RuntimeError("the clients did not report")
        mover.send("quit")  # off B: the baseline's clients take their places
        mover.process.wait(30)
        out["a_exit_code"] = a.wait(30)
        publisher = start("publish", args.rate, tree_env=True)  # as during the storm
        time.sleep(2.0)
        fresh_cpu = run.tree_stat([b.pid])[0]
        fresh = start("fresh", ports[1], moving, 0, args.spread, "-")
        status = f"{{done}}/{moving} welcomed, {{retries}} retries"
        wait_for("fresh", [fresh, stayer], lambda: bool(fresh.ready), status, args.phase_timeout)
        fresh_cpu = run.tree_stat([b.pid])[0] - fresh_cpu
        for child in (publisher, fresh, stayer):
            child.send("quit")
        stayer.process.wait(30)
        out.update(storm(mover.result, term_at, calm_at), storm_left=not calm)
        out["unresolved"] = moving - mover.result["done"]
        for key in ("missed", "repeated", "incomplete"):
            out[key] = mover.result[key] + stayer.result[key]
        pairs = array("d", latencies.read_bytes())  # (receive time, latency), one after another
        spans = ("pre", pre_at, term_at), ("storm", term_at, calm_at), ("post", calm_at, post_at)
        for name, lo, hi in spans:
            window = sorted(x for t, x in zip(pairs[::2], pairs[1::2], strict=True) if lo <= t < hi)
            out.update({f"b_p50_{name}_ms": ms(window, 0.5), f"b_p99_{name}_ms": ms(window, 0.99)})
        out["pg_scans_per_resume"] = round(out["pg_scans_resumes"] / max(out["resumed"], 1), 3)
        out["b_cpu_storm_s"] = round(cpu, 2)
        out["b_cpu_ms_per_reconnect"] = round(cpu / max(out["attempts"], 1) * 1000, 2)
        if fresh.ready:
            out["fresh_s"] = round(fresh.ready["last"] - fresh.ready["started"], 3)
        counts = fresh.ready or fresh.progress  # ready: the final counts
        out.update(fresh_retries=counts["retries"], fresh_failures=counts.get("failures"))
        out["fresh_left"] = not fresh.ready
        out["fresh_cpu_ms_per_connect"] = round(fresh_cpu / max(counts["attempts"], 1) * 1e3, 2)
        out["b_log_warnings"] = Path(f"{logs}-B.log").read_text().count(" WARNING ")
        return out
    finally:
        for process in procs:
            process.terminate()  # nothing, for one that has exited
        for process in procs:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        sql(args.postgres_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def storm(result: dict, term_at: float, calm_at: float) -> dict:
    """The storm's timings and tallies, from the moving clients' own record."""
    lost, done, waits = (sorted(result[k]) for k in ("lost_times", "done_times", "resume_waits"))
    tally = {key: result[key] for key in TALLIES}
    last = done[-1] if done else calm_at
    return {
        **tally,
        "resumed": len(done) - tally["resets"],
        "closes_s": round(lost[-1] - lost[0], 3) if lost else None,
        "resume_s": round(last - lost[-1], 3) if lost else None,
        "from_term_s": round(last - term_at, 3),
        "half_resumed_s": round(run.percentile(done, 0.5) - term_at, 3) if done else None,
        "resume_wait_p50_ms": ms(waits, 0.5),
        "resume_wait_p99_ms": ms(waits, 0.99),
    }


TALLIES = ("resets", "attempts", "retries", "replayed", "lost", "close_codes", "failures")
# header=key (the key alone when it is the header): the table's columns.
COLUMNS = (
    "run conn=connected resume_s TERM_s=from_term_s fresh_s resets retries missed repeated "
    "p50/99_pre p50/99_storm p50/99_post scans=pg_scans resume_scans=pg_scans_resumes "
    "scans/res=pg_scans_per_resume "
    "cpu_ms/reconn=b_cpu_ms_per_reconnect cpu_ms/fresh=fresh_cpu_ms_per_connect"
)
RATIOS = ("resume_s", "from_term_s", "b_p99_storm_ms", "pg_scans_per_resume")


def table(results: list[dict], labels: list[str]) -> str:
    rows = [dict(r) for r in results if r.get("resume_s") is not None]
    for r in rows:
        r["run"] = f"{r['tree']}@{r['server']}#{r['round']}"
        for name in ("pre", "storm", "post"):
            r[f"p50/99_{name}"] = f"{r[f'b_p50_{name}_ms']}/{r[f'b_p99_{name}_ms']}"
    heads, keys = zip(*((c.split("=") * 2)[:2] for c in COLUMNS.split()), strict=True)
    cells = [heads] + [[str(r.get(key)) for key in keys] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
    lines = ["\nScenario R: times in s, p50/99 of B's original clients in ms"]
    lines += ["  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)) for c in cells]
    for server in sorted({r["server"] for r in rows}):
        mine = {x: [r for r in rows if (r["tree"], r["server"]) == (x, server)] for x in labels}
        for label in labels[1:]:
            if pairs := run.paired(mine[label], mine[labels[0]]):
                each = ", ".join(f"{key} {run.spread(pairs, key)}" for key in RATIOS)
                lines.append(f"  {server}: {label}/{labels[0]}: {each}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--trees", default=f"this={run.ROOT}", help="label=path,...: ratios are to the first")
    add("--servers", default="uvicorn,daphne")
    add("--clients", type=int, default=10_000)
    add("--a-share", type=float, default=0.75, help="the share of the clients on A")
    add("--rate", type=float, default=5.0, help="persisted broadcasts a second")
    add("--rounds", type=int, default=1)
    add("--spread", type=float, default=0.5, help="s: the reconnects' uniform random wait")
    add("--pre-seconds", type=float, default=10.0, help="s: B's latency before the storm")
    add("--post-seconds", type=float, default=5.0, help="s: B's latency after, all its clients")
    add("--stats-wait", type=float, default=1.5, help="s: for PostgreSQL's table counters")
    add("--drain", type=float, default=30.0, help="s: at most, for the last id to arrive")
    add("--phase-timeout", type=float, default=600.0, help="s: at most, for each phase")
    add("--redis-url", default="redis://127.0.0.1:6379/12")
    add("--postgres-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    add("--json", metavar="PATH", help="also write all results to this file")
    args = parser.parse_args()
    if urllib.parse.urlsplit(args.redis_url).path.strip("/") in ("", "0", "10"):
        parser.error("--redis-url needs a database of its own: not 0, nor the tests' 10")
    trees = [item.split("=", 1) for item in args.trees.split(",")]
    run.stop_on_sigterm()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if hard < args.clients + 1000 or high - low < 2 * args.clients:
        print(f"warning: {hard} descriptors, {high - low} source ports", file=sys.stderr)
    args.work = Path(tempfile.mkdtemp(prefix="hub-bench-r-"))  # logs, latencies
    env = run.site_env(args.work, "redis", args.redis_url, persist=True)
    results = []
    for round_number in range(1, args.rounds + 1):
        for server in args.servers.split(","):
            for label, tree in trees:
                print(f"R {label}@{server} #{round_number}: {tree}", file=sys.stderr)
                try:
                    result = run_one(label, Path(tree).resolve(), server, args, env)
                except (RuntimeError, SystemExit, OSError, subprocess.SubprocessError) as exc:
                    print(f"  failed: {exc} (logs in {args.work})", file=sys.stderr)
                    result = {"server": server, "error": str(exc)}
                result.update(tree=label, round=round_number, rounds=args.rounds)
                results.append(result)
                run.print_result(result)
    run.print_report(table(results, [label for label, _ in trees]), results, args.json)


if __name__ == "__main__":
    main()
