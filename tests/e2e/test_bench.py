"""The benchmark, small: it starts both servers itself and measures every delivery."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.processes import descendants
from tests.e2e.conftest import cmdline, running

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def bench(*args: str, module: str = "bench.run") -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run the benchmark (or ``bench.idle``); the process and its RESULT lines."""
    run = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    results = [
        json.loads(line.removeprefix("RESULT "))
        for line in run.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    return run, results


def test_the_benchmark_runs_hub_and_raw_app_on_both_servers_and_reports_every_delivery():
    run, results = bench(
        "--scenarios", "A", "--clients", "40", "--messages", "5",
        "--servers", "daphne,uvicorn", "--apps", "hub,raw", "--idle-seconds", "1",
    )  # fmt: skip
    assert {(r["app"], r["server"]) for r in results} == {
        (app, server) for app in ("hub", "raw") for server in ("daphne", "uvicorn")
    }
    for result in results:
        assert result["connected"] == 40
        assert result["delivered"] == result["expected"] == 200
        assert result["completeness"] == 1.0
        assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
        # Measured with the clients connected; CPU ms a second cannot pass 1000 a core.
        assert 0 <= result["idle_cpu_ms_per_s"] < 1000 * (os.cpu_count() or 1)
        # The idle rate over the window is taken off, never added.
        assert result["cpu_above_idle_us_per_delivery"] <= result["cpu_us_per_delivery"]
    assert "40/40 connected" in run.stderr  # progress while clients connect
    assert "hub/raw p99" in run.stdout  # the table's ratio lines


def test_scenario_t_delivers_each_topic_to_its_subscribers_only():
    _, results = bench(
        "--scenarios", "T", "--clients", "40", "--topics", "4", "--global-only", "10",
        "--messages", "8", "--servers", "uvicorn", "--apps", "hub,raw",
    )  # fmt: skip
    assert len(results) == 2
    for result in results:
        assert result["connected"] == 50
        # 8 broadcasts over 4 topics: each of the 40 subscribers is owed 2.
        assert result["delivered"] == result["expected"] == 80
        assert result["stray"] == 0  # the 10 global-only clients got none
        assert result["cpu_us_per_delivery"] >= 0  # reported (a tiny run may read 0 ticks)


def test_a_publisher_in_another_process_is_compared_with_the_raw_app_in_the_same_run(redis_url):
    run, results = bench(
        "--scenarios", "C", "--clients", "30", "--messages", "20", "--servers", "uvicorn",
        "--layer", "redis", "--publisher", "external", "--redis-url", redis_url,
        "--apps", "hub,hub-backlog1,raw",
    )  # fmt: skip
    publishers = {r["app"]: r["publisher"] for r in results}
    # The raw app has no channel layer: it publishes in the server.
    assert publishers == {"hub": "external", "hub-backlog1": "external", "raw": "inprocess"}
    for result in results:
        assert result["delivered"] == result["expected"] == 600
    assert "hub/raw p99" in run.stdout
    assert "hub-backlog1/raw p99" in run.stdout


@pytest.mark.redis
def test_the_idle_benchmark_measures_each_process_and_uvicorn_s_supervisor_apart(redis_url):
    run, printed = bench(
        "--servers", "daphne,uvicorn", "--apps", "hub", "--procs", "1,2", "--seconds", "1",
        "--rounds", "1", "--redis-url", redis_url, module="bench.idle",
    )  # fmt: skip
    results = {(r["server"], r["procs"]): r for r in printed}
    assert set(results) == {(s, n) for s in ("daphne", "uvicorn") for n in (1, 2)}
    for (server, procs), result in results.items():
        # One figure per server process; uvicorn's workers come with their supervisor.
        assert len(result["process_ms_s"]) == procs
        assert (result["supervisor_ms_s"] is not None) == (server == "uvicorn" and procs == 2)
        parts = result["process_ms_s"] + [result["supervisor_ms_s"] or 0]
        # Every figure is rounded to a hundredth, so the parts may each sit half of one
        # above their share of the rounded total.
        slack = 0.005 * (len(parts) + 1) + 1e-9
        assert 0 < sum(parts) <= result["total_ms_s"] + slack < 1000 * (os.cpu_count() or 1)
    assert "hub@uvicorn x2, round 1: 1 s at rest" in run.stderr  # progress
    assert "| hub@uvicorn | 2 |" in run.stdout  # the table


@pytest.mark.parametrize(
    "command",
    [
        ["bench.run", "--scenarios", "A", "--clients", "40", "--messages", "400",
         "--servers", "daphne", "--apps", "raw", "--idle-seconds", "30"],
        ["bench.idle", "--servers", "daphne", "--apps", "raw", "--procs", "1",
         "--seconds", "60", "--rounds", "1"],
    ],
    ids=["bench.run", "bench.idle"],
)  # fmt: skip
def test_a_benchmark_stopped_with_sigterm_leaves_no_server_or_client_running(command):
    # Stopped mid-run, it used to leave its server and its load clients running, where
    # they took CPU from whatever was measured next.
    runner = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            spawned = descendants(runner.pid)[1:]
            if any(b"daphne" in cmdline(pid) for pid in spawned) and (
                command[0] == "bench.idle" or any(b"bench.loadclient" in cmdline(pid)
                                                  for pid in spawned)
            ):  # fmt: skip
                break
            time.sleep(0.2)
        else:
            pytest.fail("the benchmark started no server within 60 s")
        time.sleep(3)
        spawned = descendants(runner.pid)[1:]
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=30)
    finally:
        runner.kill()
    assert runner.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert [pid for pid in spawned if running(pid)] == []


@pytest.mark.redis
def test_scenario_r_moves_every_client_of_a_stopped_process_with_nothing_missed(tmp_path):
    # Needs PostgreSQL and Redis (db 12): a small deploy, resumed from recent history.
    run, results = bench(
        "--servers", "uvicorn", "--clients", "200", "--pre-seconds", "2",
        "--post-seconds", "1", "--phase-timeout", "60", "--json", str(tmp_path / "r.json"),
        module="bench.restart",
    )  # fmt: skip
    (result,) = results
    assert result["connected"] == 200 and result["on_a"] == 150
    assert result["close_codes"] == {"1012": 150}
    assert (result["resumed"], result["resets"], result["unresolved"]) == (150, 0, 0)
    assert (result["missed"], result["repeated"], result["incomplete"]) == (0, 0, 0)
    assert result["pg_scans_resumes"] < 15, "resumes read history from memory"
    assert "Scenario R" in run.stdout
