"""
The load benchmark: start a server, connect N clients, publish M broadcasts at R per
second, and measure every delivery.

    python -m bench.run                          # all scenarios, hub and raw, daphne and uvicorn
    python -m bench.run --scenarios A --servers uvicorn --apps hub,raw
    python -m bench.run --scenarios A --layer redis --publisher external
    python -m bench.run --scenarios A,D,T        # T: topic broadcasts (see SCENARIOS)
    python -m bench.run --scenarios C,E --apps hub,hub-single,raw   # coalescing on and off
    python -m bench.run --scenarios C --layer redis-pubsub --procs 1,2 --apps hub
    python -m bench.run --scenarios E --layer redis-pubsub --procs 1,2 --apps hub --rounds 5

Each run prints a progress line while clients connect, then one JSON line
(``RESULT {...}``); a table per scenario closes the report. The raw ASGI app
(bench/rawapp.py) on the same server is the ceiling the hub is compared with (it has no
channel layer, so it publishes in the server even with ``--publisher external``);
ratios taken in one run are what count on a shared machine. ``hub-single`` is the
hub with coalescing off (its COALESCE_MAX and PIPELINE_MAX constants set to 1 through
harness.constants): one write per broadcast; ``hub-backlog1`` the hub whose
publishers wait for an empty relay queue on channels-redis core
(BROADCAST_MAX_RELAY_BACKLOG=1, not 4). With
``--procs 2`` the server runs as two processes behind Redis: uvicorn ``--workers 2``
on one port, or two daphne processes on two ports with the load clients split
between them; CPU and memory are then the whole process tree's. ``--idle-seconds S``
first measures the servers' CPU for S seconds with the clients connected and nothing
sent: the fixed cost a process adds. ``--rounds N`` runs every configuration N times,
interleaved, and gives each ratio as the median of the rounds' ratios, each taken
within one round.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from dataclasses import dataclass
from pathlib import Path

from harness.processes import descendants

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    messages: int
    rate: float  # per second; 0 means as fast as possible
    # With topics: broadcast n goes to topic t{n % topics}, client j subscribes to
    # t{j % topics}, and global_only more clients subscribe to none (owed nothing).
    topics: int = 0
    global_only: int = 0
    # Broadcasts published back to back each time; ``rate`` is then bursts a second.
    burst: int = 0

    @property
    def publish_seconds(self) -> float:
        if not self.rate:
            return 0
        return self.messages / self.rate / (self.burst or 1)

    def owed(self, client: int) -> int:
        """Broadcasts client number ``client`` (of the subscribing ones) must get."""
        if not self.topics:
            return self.messages
        return len(range(client % self.topics, self.messages, self.topics))


SCENARIOS = {
    "A": Scenario("A", 1_000, 100, 20),
    "B": Scenario("B", 5_000, 50, 10),
    "C": Scenario("C", 1_000, 500, 0),
    "D": Scenario("D", 10_000, 20, 5),
    # 10,000 clients over 1,000 topics (10 each) and 1,000 on the global stream only;
    # 200 topic broadcasts a second for 10 s: each reaches its 10 subscribers.
    "T": Scenario("T", 10_000, 2_000, 200, topics=1_000, global_only=1_000),
    # Bursts of 50 broadcasts published back to back, one a second for 20 s.
    "E": Scenario("E", 1_000, 1_000, 1, burst=50),
}

APPS = {
    "hub": "bench.hubapp:app",
    "hub-single": "bench.hubapp:app",
    "hub-backlog1": "bench.hubapp:app",
    "raw": "bench.rawapp:app",
}
# Each app's own environment, for its servers and its publisher: hub-single is the hub
# with coalescing off (harness.constants); hub-backlog1 lets publishers on
# channels-redis core run one broadcast ahead of a relay, not four.
APP_ENV = {
    "hub-single": {
        "HUB_CONSTANTS": "broadcast.stream.relay.COALESCE_MAX=1 "
        "broadcast.publishing.api.PIPELINE_MAX=1"
    },
    "hub-backlog1": {"BROADCAST_MAX_RELAY_BACKLOG": "1"},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR", "")


class _ProfiledServer:
    """py-spy's child stands in for the server: /proc figures and signals go to it."""

    def __init__(self, spy: subprocess.Popen) -> None:
        self.spy = spy
        children = Path(f"/proc/{spy.pid}/task/{spy.pid}/children").read_text().split()
        self.pid = int(children[0])

    def poll(self):
        return self.spy.poll()

    @property
    def returncode(self):
        return self.spy.returncode

    def terminate(self) -> None:
        os.kill(self.pid, 15)

    def wait(self, timeout=None):
        return self.spy.wait(timeout)

    def kill(self) -> None:
        self.spy.kill()


UVICORN_WS = os.environ.get("BENCH_UVICORN_WS", "websockets-sansio")
# daphne listens with Twisted's default backlog of 50 connections: in a connect burst
# the kernel drops the rest of the SYNs and clients retry after 1, 3, 7, 15 s (10,000
# clients: 28 s instead of 4). The daphne command in docs/operations.md raises it, through a
# Twisted endpoint string, to uvicorn's default; BENCH_DAPHNE_BACKLOG=50 measures
# daphne as it comes.
DAPHNE_BACKLOG = int(os.environ.get("BENCH_DAPHNE_BACKLOG", "2048"))


def server_command(server: str, app: str, port: int, workers: int = 1) -> list[str]:
    if server == "daphne":
        endpoint = f"tcp:port={port}:interface=127.0.0.1:backlog={DAPHNE_BACKLOG}"
        return [PY, "-m", "daphne", "-e", endpoint, "-v", "0", APPS[app]]
    if server == "uvicorn":
        return [
            PY, "-m", "uvicorn", APPS[app], "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--ws", UVICORN_WS,
            "--lifespan", "off", "--log-level", "warning", "--no-access-log",
        ] + (["--workers", str(workers)] if workers > 1 else [])  # fmt: skip
    raise SystemExit(f"unknown server {server!r}")


def proc_stat(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, RSS KiB, peak RSS KiB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return cpu, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def tree_stat(pids: list[int]) -> tuple[float, int, int]:
    """proc_stat summed over ``pids`` and every process under them."""
    totals = [0.0, 0, 0]
    for root in pids:
        for pid in descendants(root):
            try:
                for index, value in enumerate(proc_stat(pid)):
                    totals[index] += value
            except FileNotFoundError:  # a helper that has just exited
                pass
    return totals[0], int(totals[1]), int(totals[2])


def tree_cpu_ns(pids: list[int]) -> int:
    """
    CPU nanoseconds of ``pids``, the processes under them and all their threads, from
    the scheduler's own clock: the idle window needs it, since /proc's 10 ms ticks
    are a sixth of what one idle process spends in 10 s. A thread that exits is no
    longer counted, so this is for windows where none does.
    """
    total = 0
    for root in pids:
        for pid in descendants(root):
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    total += int((task / "schedstat").read_text().split()[0])
            except FileNotFoundError:  # a helper, or a thread, that has just exited
                pass
    return total


def percentile(sorted_values: array | list, fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


class LoadClient:
    """One bench/loadclient.py process and the events it reports."""

    def __init__(
        self,
        port: int,
        count: int,
        expected: int,
        workdir: Path,
        index: int,
        topics: tuple[int, int] = (0, 0),
    ) -> None:
        self.out = workdir / f"latencies-{index}.bin"
        self.owed_nothing = expected == 0
        self.process = subprocess.Popen(
            [PY, "-m", "bench.loadclient", "127.0.0.1", str(port), str(count), str(expected),
             str(self.out), str(topics[0]), str(topics[1])],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.connected = 0
        self.ready: dict | None = None
        self.result: dict | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            event = json.loads(line)
            if event["event"] == "progress":
                self.connected = event["connected"]
            elif event["event"] == "ready":
                self.connected = event["connected"]
                self.ready = event
            elif event["event"] == "result":
                self.result = event

    def drain(self, seconds: float) -> None:
        self.process.stdin.write(f"drain {seconds}\n")
        self.process.stdin.flush()

    def latencies(self) -> array:
        values = array("d")
        with open(self.out, "rb") as handle:
            values.frombytes(handle.read())
        return values


def stop_on_sigterm() -> None:
    """
    End a run on SIGTERM as Ctrl-C does, through the ``finally`` blocks that stop its
    servers and load clients: by default the signal ends this process alone, and they
    go on taking CPU from whatever is measured next.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def wait_until_serving(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/bench/publish?count=0", timeout=2
            ) as response:
                if response.status == 202:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not answer")


def run_one(
    scenario: Scenario,
    server: str,
    app: str,
    env: dict[str, str],
    client_procs: int,
    publisher: str,
    workdir: Path,
    procs: int = 1,
    idle_seconds: float = 0,
) -> dict:
    env = {**env, **APP_ENV.get(app, {})}
    # uvicorn's workers share one port; daphne processes listen on a port each.
    ports = [free_port() for _ in range(procs if server == "daphne" else 1)]
    port = ports[0]
    command = server_command(server, app, port, procs if server == "uvicorn" else 1)
    if PROFILE_DIR:
        # py-spy samples the server; the folded stacks show where its time goes.
        out = Path(PROFILE_DIR) / f"{scenario.name}-{app}-{server}.folded"
        # BENCH_PYSPY_ARGS=--native (blocking, so slower) also shows C frames: the
        # garbage collector's own time is only visible that way.
        spy_args = os.environ.get("BENCH_PYSPY_ARGS", "--nonblocking").split()
        command = ["py-spy", "record", *spy_args, "-r", "200", "-f", "raw", "-o", str(out),
                   "--", *command]  # fmt: skip
    server_process = subprocess.Popen(command, cwd=ROOT, env=env)
    if PROFILE_DIR:
        time.sleep(1.0)
        server_process = _ProfiledServer(server_process)
    processes = [server_process] + [
        subprocess.Popen(server_command(server, app, other), cwd=ROOT, env=env)
        for other in ports[1:]
    ]
    pids = [process.pid for process in processes]
    clients: list[LoadClient] = []
    try:
        for each_port, process in zip(ports, processes, strict=True):
            wait_until_serving(each_port, process)
        time.sleep(0.5 if procs == 1 else 2.0)  # uvicorn's workers start one by one
        connect_cpu_before, rss_base, _ = tree_stat(pids)
        shares = [scenario.clients // client_procs] * client_procs
        shares[0] += scenario.clients - sum(shares)
        label = f"{scenario.name} {app}@{server}"
        total = scenario.clients + scenario.global_only
        if scenario.topics:
            # Each process's clients have one topic's share of broadcasts each.
            per = scenario.messages // scenario.topics
            if per * scenario.topics != scenario.messages:
                raise SystemExit("a topic scenario needs messages divisible by topics")
            firsts = [sum(shares[:index]) for index in range(len(shares))]
            clients = [
                LoadClient(
                    ports[index % len(ports)], share, per, workdir, index,
                    (scenario.topics, first),
                )
                for index, (share, first) in enumerate(zip(shares, firsts, strict=True))
                if share
            ]  # fmt: skip
            if scenario.global_only:
                clients.append(LoadClient(ports[-1], scenario.global_only, 0, workdir, len(shares)))
        else:
            clients = [
                LoadClient(ports[index % len(ports)], share, scenario.messages, workdir, index)
                for index, share in enumerate(shares)
                if share
            ]
        while not all(client.ready for client in clients):
            connected = sum(client.connected for client in clients)
            print(f"  {label}: {connected}/{total} connected", file=sys.stderr)
            time.sleep(0.5)
            if any(client.process.poll() is not None and not client.ready for client in clients):
                raise SystemExit("a load client exited early")
        # From the first client process's start to the last welcome, by their clocks.
        connect_seconds = max(client.ready["seconds"] for client in clients)
        connected = sum(client.ready["connected"] for client in clients)
        owed_clients = sum(c.ready["connected"] for c in clients if not c.owed_nothing)
        connect_cpu = tree_stat(pids)[0] - connect_cpu_before
        print(f"  {label}: {connected}/{total} connected", file=sys.stderr)
        time.sleep(1.0)
        idle_cpu_before = tree_cpu_ns(pids)
        time.sleep(idle_seconds)  # what the processes cost with nothing to send
        idle_cpu_ns = tree_cpu_ns(pids) - idle_cpu_before
        cpu_before, rss_idle, _ = tree_stat(pids)
        publish_start = time.time()
        publish_seconds = scenario.publish_seconds
        if publisher == "inprocess":
            urllib.request.urlopen(
                f"http://127.0.0.1:{port}/bench/publish?count={scenario.messages}"
                f"&rate={scenario.rate}&topics={scenario.topics}&burst={scenario.burst}",
                timeout=10,
            ).close()
        else:
            subprocess.run(
                [PY, "-m", "bench.publisher", str(scenario.messages), str(scenario.rate),
                 str(scenario.topics), str(scenario.burst)],
                cwd=ROOT, env=env, check=True,
            )  # fmt: skip
        for client in clients:
            client.drain(publish_seconds + 30)
        for client in clients:
            client.process.wait(timeout=publish_seconds + 120)
            client.thread.join(5)
        cpu_after, _, rss_peak = tree_stat(pids)
        cpu_window = time.time() - publish_start
    finally:
        stopping = processes + [client.process for client in clients]
        for process in stopping:
            if process.poll() is None:
                process.terminate()
        for process in stopping:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
    latencies = sorted(value for client in clients for value in client.latencies())
    delivered = sum(c.result["delivered"] for c in clients if not c.owed_nothing)
    # Deliveries to clients owed nothing: a topic broadcast that leaked to them.
    stray = sum(c.result["delivered"] for c in clients if c.owed_nothing)
    per_client = scenario.messages // scenario.topics if scenario.topics else scenario.messages
    expected = owed_clients * per_client
    last_receive = max(client.result["last_receive"] for client in clients)
    close_codes: dict[str, int] = {}
    for client in clients:
        for code, number in client.result["close_codes"].items():
            close_codes[code] = close_codes.get(code, 0) + number
    span = max(last_receive - publish_start, 1e-9)
    return {
        "scenario": scenario.name,
        "app": app,
        "server": server,
        "procs": procs,
        "daphne_backlog": DAPHNE_BACKLOG if server == "daphne" else None,
        "layer": env.get("REDIS_LAYER", "core") if env.get("REDIS_URL") else "memory",
        "publisher": publisher,
        "persist": env.get("BENCH_PERSIST") == "1",
        "clients": scenario.clients + scenario.global_only,
        "topics": scenario.topics,
        "connected": connected,
        "connect_s": round(connect_seconds, 2),
        "connect_cpu_s": round(connect_cpu, 2),
        "messages": scenario.messages,
        "rate": scenario.rate,
        "burst": scenario.burst,
        "expected": expected,
        "delivered": delivered,
        "stray": stray,
        "completeness": round(delivered / expected, 6) if expected else 0.0,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p90_ms": round(percentile(latencies, 0.90) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
        "deliveries_per_s": round(delivered / span),
        "server_cpu_s": round(cpu_after - cpu_before, 2),
        "idle_cpu_ms_per_s": (round(idle_cpu_ns / idle_seconds / 1e6, 2) if idle_seconds else None),
        # Three places: below 1 µs a delivery, one place would make the ratios coarse.
        "cpu_us_per_delivery": round((cpu_after - cpu_before) / max(delivered, 1) * 1e6, 3),
        # What delivering cost above the processes' idle rate over the same window: the
        # per-delivery part, without what each process costs with nothing to send.
        "cpu_above_idle_us_per_delivery": (
            round(
                (cpu_after - cpu_before - idle_cpu_ns / idle_seconds / 1e9 * cpu_window)
                / max(delivered, 1)
                * 1e6,
                3,
            )
            if idle_seconds
            else None
        ),
        "peak_rss_mib": round(rss_peak / 1024, 1),
        "rss_per_conn_kib": round((rss_idle - rss_base) / max(connected, 1), 1),
        "close_codes": close_codes,
    }


COLUMNS = [
    ("app@server", lambda r: f"{r['app']}@{r['server']}" + procs_label(r)),
    ("conn", lambda r: f"{r['connected']}"),
    ("conn s", lambda r: f"{r['connect_s']:.2f}"),
    ("complete", lambda r: f"{r['completeness'] * 100:.2f}%"),
    ("p50 ms", lambda r: f"{r['p50_ms']:.1f}"),
    ("p90 ms", lambda r: f"{r['p90_ms']:.1f}"),
    ("p99 ms", lambda r: f"{r['p99_ms']:.1f}"),
    ("max ms", lambda r: f"{r['max_ms']:.1f}"),
    ("deliv/s", lambda r: f"{r['deliveries_per_s']:,}"),
    ("cpu s", lambda r: f"{r['server_cpu_s']:.2f}"),
    ("µs/deliv", lambda r: f"{r['cpu_us_per_delivery']:.2f}"),
    ("idle ms/s", lambda r: optional(r.get("idle_cpu_ms_per_s"))),
    ("stray", lambda r: f"{r['stray']}"),
    ("peak MiB", lambda r: f"{r['peak_rss_mib']:.1f}"),
    ("KiB/conn", lambda r: f"{r['rss_per_conn_kib']:.1f}"),
]


def optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def procs_label(result: dict) -> str:
    label = f" x{result['procs']}" if result.get("procs", 1) > 1 else ""
    return label + (f" #{result['round']}" if result.get("rounds", 1) > 1 else "")


def table(results: list[dict]) -> str:
    lines = []
    for name in sorted({r["scenario"] for r in results}):
        rows = [r for r in results if r["scenario"] == name]
        first = rows[0]
        rate = f"{first['rate']:g}/s" if first["rate"] else "max rate"
        if first.get("burst"):
            rate = f"bursts of {first['burst']}, {rate}"
        extra = {f"{r['layer']}/{r['publisher']}" for r in rows}
        over = f" over {first['topics']} topics" if first.get("topics") else ""
        lines.append(f"\nScenario {name}: {first['clients']} clients{over} x {first['messages']} "
                     f"msgs at {rate} ({', '.join(sorted(extra))})")  # fmt: skip
        cells = [[fmt(r) for _, fmt in COLUMNS] for r in rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(COLUMNS)]
        lines.append("  ".join(h.rjust(w) for (h, _), w in zip(COLUMNS, widths, strict=True)))
        for c in cells:
            lines.append("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))
        lines.extend(ratios(rows))
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    """Each comparison within one round; with several rounds, their median and each one."""
    out = []
    for server in sorted({r["server"] for r in rows}):
        for app in ("hub", "hub-single", "hub-backlog1"):
            mine = [r for r in rows if r["server"] == server and r["app"] == app]
            one_process = [r for r in mine if single_process(r)]
            for procs in sorted({r.get("procs", 1) for r in mine} - {1}):
                many = [r for r in mine if r.get("procs", 1) == procs]
                pairs = paired(many, one_process)
                if pairs:
                    above_idle = ""
                    if all(r.get("cpu_above_idle_us_per_delivery") for pair in pairs for r in pair):
                        above_idle = (
                            f" (above idle {spread(pairs, 'cpu_above_idle_us_per_delivery')})"
                        )
                    out.append(
                        f"  {server}: {app} x{procs} / x1 CPU per delivery "
                        f"{spread(pairs, 'cpu_us_per_delivery')}{above_idle}, "
                        f"deliveries/s {spread(pairs, 'deliveries_per_s', percent=True)}"
                    )
            raw = [r for r in rows if r["server"] == server and r["app"] == "raw"]
            pairs = paired(one_process, raw)
            if pairs:
                out.append(
                    f"  {server}: {app}/raw p99 {spread(pairs, 'p99_ms')}, "
                    f"deliveries/s {spread(pairs, 'deliveries_per_s', percent=True)}, "
                    f"CPU per delivery {spread(pairs, 'cpu_us_per_delivery')}"
                )
    return out


def single_process(result: dict) -> bool:
    return result.get("procs", 1) == 1


def paired(these: list[dict], those: list[dict]) -> list[tuple[dict, dict]]:
    """Results from the same round: side by side on a machine whose speed drifts."""
    return [
        (one, other)
        for one in these
        for other in those
        if other.get("round", 1) == one.get("round", 1)
    ]


def spread(pairs: list[tuple[dict, dict]], key: str, *, percent: bool = False) -> str:
    """The ratio of ``key``, or its median over the rounds followed by each round's."""
    values = [one[key] / max(other[key], 0.1 if not percent else 1) for one, other in pairs]

    def shown(value: float) -> str:
        return f"{value:.0%}" if percent else f"{value:.2f}x"

    if len(values) == 1:
        return shown(values[0])
    each = ", ".join(shown(value) for value in values)
    return f"median {shown(statistics.median(values))} ({each})"


def print_result(result: dict) -> None:
    """One run's figures, as a ``RESULT`` line of JSON, as soon as they are measured."""
    print("RESULT " + json.dumps(result), flush=True)


def print_report(tables: str, results: list[dict], json_path: str | None) -> None:
    """The closing tables, and every run's figures to ``json_path`` if one was given."""
    print(tables, flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))


def site_env(workdir: Path, layer: str, redis_url: str, persist: bool = False) -> dict[str, str]:
    """The servers' environment: a fresh SQLite database in ``workdir``, migrated, and ``layer``."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "hubsite.settings",
        "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "benchmark-only-secret-key-" + "x" * 30,
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "BROADCAST_LOG_LEVEL": "WARNING",
        "BENCH_PERSIST": "1" if persist else "0",
    }
    env.pop("REDIS_URL", None)
    if layer != "memory":
        env["REDIS_URL"] = redis_url
        env["REDIS_LAYER"] = "pubsub" if layer == "redis-pubsub" else "core"
    subprocess.run([PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="A,B,C,D")
    parser.add_argument("--servers", default="daphne,uvicorn")
    parser.add_argument("--apps", default="hub,raw")
    parser.add_argument("--layer", choices=["memory", "redis", "redis-pubsub"], default="memory")
    parser.add_argument("--publisher", choices=["inprocess", "external"], default="inprocess")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--procs", default="1", help="server processes, e.g. 1,2 (more than 1 needs Redis)"
    )
    parser.add_argument("--persist", action="store_true", help="publish persisted broadcasts")
    parser.add_argument("--clients", type=int, help="override the scenario's client count")
    parser.add_argument("--messages", type=int, help="override the scenario's message count")
    parser.add_argument("--topics", type=int, help="override a topic scenario's topic count")
    parser.add_argument(
        "--global-only", type=int, help="override a topic scenario's global-only clients"
    )
    parser.add_argument(
        "--burst", type=int, help="publish in bursts of this many, back to back (C: 500)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run every configuration this many times, interleaved; ratios are medians",
    )  # fmt: skip
    parser.add_argument(
        "--idle-seconds", type=float, default=0,
        help="before publishing, measure the servers' CPU this long with nothing sent",
    )  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="also write all results to this file")
    args = parser.parse_args()
    stop_on_sigterm()
    if args.publisher == "external" and args.layer == "memory":
        parser.error("--publisher external needs --layer redis or redis-pubsub")
    procs_list = [int(n) for n in args.procs.split(",")]
    if args.idle_seconds < 0:
        parser.error("--idle-seconds cannot be negative")
    if args.rounds < 1:
        parser.error("--rounds needs a positive number")
    if max(procs_list) > 1 and args.layer == "memory":
        parser.error("--procs above 1 needs --layer redis or redis-pubsub")
    if max(procs_list) > 1 and PROFILE_DIR:
        parser.error("profiling measures one server process: --procs 1")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    env = site_env(workdir, args.layer, args.redis_url, args.persist)

    results = []
    for name in args.scenarios.split(","):
        scenario = SCENARIOS[name.strip()]
        if (
            args.clients
            or args.messages
            or args.topics
            or args.global_only is not None
            or args.burst is not None
        ):
            scenario = Scenario(
                scenario.name,
                args.clients or scenario.clients,
                args.messages or scenario.messages,
                scenario.rate,
                args.topics if args.topics and scenario.topics else scenario.topics,
                scenario.global_only if args.global_only is None else args.global_only,
                scenario.burst if args.burst is None else args.burst,
            )
        for server, round_number, procs, app in (
            (server, round_number, procs, app)
            for server in args.servers.split(",")
            for round_number in range(1, args.rounds + 1)
            for procs in procs_list
            for app in args.apps.split(",")
        ):
            if procs > 1 and app == "raw":
                continue  # the raw app cannot reach another process's clients
            # The raw app has no channel layer: it publishes in the server, the ceiling
            # that a hub publishing from another process is compared with.
            publisher = "inprocess" if app == "raw" else args.publisher
            if args.layer != "memory":
                subprocess.run(["redis-cli", "-u", args.redis_url, "flushdb"],
                               check=True, capture_output=True)  # fmt: skip
            print(f"{scenario.name} {app}@{server} x{procs}: starting", file=sys.stderr)
            result = run_one(
                scenario, server, app, env, args.client_procs, publisher, workdir, procs,
                args.idle_seconds,
            )  # fmt: skip
            result.update(round=round_number, rounds=args.rounds)
            results.append(result)
            print_result(result)
    print_report(table(results), results, args.json)


if __name__ == "__main__":
    main()
