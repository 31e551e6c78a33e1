"""
Prometheus metrics, with prometheus-client.

One server process keeps its metrics in memory and ``/metrics`` shows them. Several
processes on one host (the usual deployment behind nginx) share a directory named
by the PROMETHEUS_MULTIPROC_DIR environment variable, set before the processes
start and emptied when the whole deployment (re)starts; prometheus-client then sums
every process's figures, the ``manage.py broadcast`` command's publishes included.
Processes on several hosts are scraped per host, as Prometheus expects.

Nothing here runs per client: counters move once per broadcast and per connect.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST

connections = Gauge(
    "broadcast_connections",
    "WebSocket clients connected now.",
    multiprocess_mode="livesum",
)
connections_accepted = Counter(
    "broadcast_connections_accepted", "WebSocket clients accepted since start."
)
published = Counter("broadcast_published", "Broadcasts handed to the channel layer.")
publish_failures = Counter(
    "broadcast_publish_failures", "Broadcasts that could not be handed to the channel layer."
)
deliveries = Counter(
    "broadcast_deliveries", "Broadcast frames handed to clients' connections (one per client)."
)
revocations = Counter(
    "broadcast_revocations",
    "Connections closed with 4003 because their user's access was revoked.",
)
slow_client_cuts = Counter(
    "broadcast_slow_client_cuts",
    "Clients disconnected for falling more than BROADCAST_MAX_PENDING_BYTES behind.",
)
relays_running = Gauge(
    "broadcast_relays_running",
    "Server processes whose relay is receiving broadcasts (0 while one restarts).",
    multiprocess_mode="livesum",
)
relay_restarts = Counter(
    "broadcast_relay_restarts",
    "Times a relay failed (channel layer unreachable, or an error) and restarted.",
)
relays_holding = Gauge(
    "broadcast_relays_holding",
    "Server processes whose relay holds the stream at a gap that the database cannot "
    "fill yet (it retries; past a bound, clients get hub.reset).",
    multiprocess_mode="livesum",
)
resets = Counter(
    "broadcast_resets",
    "hub.reset frames a relay sent its clients: ids they will not get (beyond history, "
    "or history unreadable past the hold).",
)
resumes = Counter(
    "broadcast_resumes",
    "Resumes answered, by where their history came from: recent history in memory, "
    "or the database (older, or past what this process's relay saw).",
    ["source"],
)
backpressure_seconds = Counter(
    "broadcast_backpressure_seconds",
    "Time publishers waited for relays that were BROADCAST_MAX_RELAY_BACKLOG behind.",
)
fan_out_seconds = Histogram(
    "broadcast_fan_out_seconds",
    "Time to hand one batch of broadcasts (usually one) to every client of a process.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
fan_out_batch = Histogram(
    "broadcast_fan_out_batch",
    "Broadcasts per fan-out, and per take during a sweep: more than one when a relay "
    "coalesced what the layer held.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_processes(path: str) -> None:
    """
    Drop the live gauges of processes that are gone. A process that stops cleanly
    does this itself (:func:`process_stopped`); one that was killed cannot, and its
    last connection count would otherwise be summed in for ever.
    """
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = re.search(r"_(\d+)\.db$", name)
        if match and not _pid_alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), path)


def process_stopped() -> None:
    path = multiprocess_dir()
    if path:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(os.getpid(), path)


def render() -> bytes:
    """The metrics page: this process's registry, or every process's in the directory."""
    path = multiprocess_dir()
    if not path:
        return generate_latest(REGISTRY)
    forget_dead_processes(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    return generate_latest(registry)
