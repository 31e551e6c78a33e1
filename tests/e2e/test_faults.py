"""
A short run of the fault sequencer on both servers (docs/reliability.md): random
sequences of connects, resumes, floods, hostile frames, Redis pauses and restarts,
killed publishers and server restarts, checked by the oracle after every step.
``make faults`` runs it for longer; FAULTS_SEED and FAULTS_CI_SECONDS change this run.
"""

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from faults.run import run
from harness.processes import descendants
from tests.e2e.conftest import ROOT, cmdline, process_state, running

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_the_fault_sequencer_finds_no_violation(kind, capsys):
    seconds = float(os.environ.get("FAULTS_CI_SECONDS", "40"))
    # uvicorn one seed on: with one sequence a server, an odd seed and an even one
    # (the pub/sub layer and the core layer; faults/run.py).
    seed = int(os.environ.get("FAULTS_SEED", "1")) + (kind == "uvicorn")
    status = await run(seconds, seed, [kind], ops=25, shrink_budget=120)
    report = capsys.readouterr().out
    assert status == 0, report
    assert "no violation" in report


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_first_client_after_a_redis_restart_is_welcomed(kind, tmp_path):
    # Shrunk by the sequencer (daphne, seed 115): the process had used Redis (an admin
    # publish), Redis restarted, and its first WebSocket client then failed with 1011
    # because joining the group hit a pooled connection Redis had closed.
    await no_violation_in(
        kind,
        tmp_path,
        ("publish_admin", {"server": 1, "seed": 1607433449, "count": 14}),
        ("redis_restart", {"server": 0, "seed": 1023719173}),
        ("connect", {"server": 1, "seed": 2093340989, "count": 2}),
    )


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_process_that_refused_a_handshake_still_stops_on_sigterm(kind, tmp_path):
    # On the core layer, a WebSocket refused before the process's first client left a
    # task running, and uvicorn's shutdown waited for it for ever; the restart now
    # reports a server that stays.
    await no_violation_in(
        kind,
        tmp_path,
        ("hostile", {"server": 0, "seed": 1, "kind": "refused"}),
        ("connect", {"server": 0, "seed": 2, "count": 1}),
        ("server_restart", {"server": 0, "seed": 3, "signal": "SIGTERM"}),
    )


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_first_client_during_a_database_cut_is_told_to_retry_then_served(
    kind, tmp_path, monkeypatch
):
    # Shrunk by the sequencer (daphne, pub/sub, seed 49, PostgreSQL): a process whose
    # database was cut got its first client, could not read its position, and closed
    # it with 1011 and a traceback; it is now 1013, and the client is served once the
    # database is back. On the core layer, the cut also meets a broadcast lost in the
    # layer: a gap the relay holds until it can fill it.
    from tests.e2e.conftest import POSTGRES_URL

    monkeypatch.setenv("DATABASE_URL", POSTGRES_URL)
    await no_violation_in(
        kind, tmp_path, ("db_cut", {"server": 0, "seed": 638799359, "count": 1, "topic": None})
    )


async def test_a_stall_resumes_its_server_even_while_the_publish_waits_for_that_server(
    tmp_path,
):
    # Found by the sequencer (uvicorn, seed 6, SQLite): the server was stopped while it
    # held SQLite's write lock, so the publish waited on the server and the stall on the
    # publish, until the publisher gave up with "database is locked".
    from faults.run import make_site
    from faults.sequencer import STALL_SECONDS, Run

    class PublishBehindTheServer:
        """Publishes that, like a write behind a stopped writer's lock, wait for it to run."""

        def __init__(self, pid):
            self.pid = pid

        async def publish(self, count, **kwargs):
            while process_state(self.pid) == "T":
                await asyncio.sleep(0.05)

    site, drop = make_site(tmp_path)
    server = subprocess.Popen(["sleep", "60"])
    try:
        sequence = Run("uvicorn", site, redis=None)
        sequence.oracle = PublishBehindTheServer(server.pid)
        step = sequence.op_server_stall(SimpleNamespace(process=server), random.Random(1), 5)
        await asyncio.wait_for(step, STALL_SECONDS + 5)
        assert process_state(server.pid) != "T"
    finally:
        server.kill()
        server.wait()
        drop()


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_revoked_users_get_nothing_after_the_acknowledgement_on_either_process(
    kind, tmp_path
):
    # The access operations on both processes, across a restart: each way to revoke,
    # with the oracle failing any broadcast published after the acknowledgement that
    # reaches a connection of that user, and any such connection still open after.
    await no_violation_in(
        kind,
        tmp_path,
        ("connect_user", {"server": 0, "seed": 1, "user": "fault.u0", "count": 2}),
        ("connect_user", {"server": 1, "seed": 2, "user": "fault.u0", "count": 1}),
        ("connect_user", {"server": 1, "seed": 3, "user": "fault.u1", "count": 2}),
        ("connect", {"server": 0, "seed": 4, "count": 2}),
        ("publish", {"server": 0, "seed": 5, "count": 5}),
        ("revoke", {"server": 0, "seed": 6, "user": "fault.u0", "how": "password"}),
        ("publish", {"server": 1, "seed": 7, "count": 5}),
        ("connect_user", {"server": 0, "seed": 8, "user": "fault.u0", "count": 1}),
        ("server_restart", {"server": 1, "seed": 9, "signal": "SIGTERM"}),
        ("revoke", {"server": 1, "seed": 10, "user": "fault.u1", "how": "deactivate"}),
        ("publish_ephemeral", {"server": 0, "seed": 11, "count": 5}),
        ("revoke", {"server": 0, "seed": 12, "user": "fault.u0", "how": "disconnect"}),
        ("connect_user", {"server": 1, "seed": 13, "user": "fault.u1", "count": 1}),
        ("publish", {"server": 1, "seed": 14, "count": 3}),
    )


async def no_violation_in(kind, tmp_path, *steps):
    """Run one fixed sequence of operations on fresh servers (the core layer)."""
    from faults.run import make_site
    from faults.sequencer import Op, run_sequence

    site, drop = make_site(tmp_path)
    sequence = [Op(name, args) for name, args in steps]
    try:
        done, violation = await run_sequence(kind, sequence, site, log=lambda *args: None)
    finally:
        drop()
    assert violation is None, violation
    assert done == len(steps)


async def test_a_stop_that_a_finished_wait_swallowed_still_stops_the_sequence():
    # On Python 3.11 a SIGTERM that lands as a client's welcome arrives was swallowed by
    # asyncio.wait_for, and a stopped run went on to its end; before every operation
    # the sequencer now raises the cancel that was asked for.
    from faults.sequencer import raise_if_cancelled

    async def an_operation_as_sigterm_lands():
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        welcome = loop.create_future()
        loop.call_soon(welcome.set_result, "hub.welcome")
        loop.call_soon(task.cancel)
        with contextlib.suppress(asyncio.CancelledError):  # what 3.12 and later raise here
            await asyncio.wait_for(welcome, 5)

    async def sequence():
        done = 0
        for done in range(1, 4):
            raise_if_cancelled()
            if done == 1:
                await an_operation_as_sigterm_lands()
        return done

    raise_if_cancelled()  # nothing was asked
    with pytest.raises(asyncio.CancelledError):
        await asyncio.ensure_future(sequence())


@pytest.mark.parametrize("after", [0, 2], ids=["as-its-second-server-starts", "mid-sequence"])
def test_a_sequencer_stopped_with_sigterm_leaves_no_server_or_redis_running(after):
    # Killed mid-run, it used to leave its servers (one of them stopped with SIGSTOP by
    # a stall) and its Redis running, where they went on taking CPU from what ran next;
    # stopped while a server was starting, it left that one.
    runner = subprocess.Popen(
        [sys.executable, "-m", "faults.run", "--seconds", "300", "--servers", "uvicorn"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            spawned = descendants(runner.pid)[1:]  # the runner, then what it started
            commands = [cmdline(pid) for pid in spawned if running(pid)]
            if any(b"uvicorn" in c for c in commands) and any(
                b"redis-server" in c for c in commands
            ):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the sequencer started no server and Redis within 60 s")
        time.sleep(after)
        spawned = descendants(runner.pid)[1:]  # the runner, then what it started
        runner.send_signal(signal.SIGTERM)
        try:
            output, _ = runner.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            runner.send_signal(signal.SIGUSR2)  # its tasks' stacks, for the report
            time.sleep(1)
            runner.send_signal(signal.SIGUSR1)  # and its threads'
            time.sleep(2)
            runner.kill()
            output, _ = runner.communicate(timeout=10)
            pytest.fail(f"the sequencer ran on 60 s after SIGTERM:\n{output[-6000:]}")
    finally:
        runner.kill()
    assert runner.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "Stopped by SIGTERM" in output
    assert [pid for pid in spawned if running(pid)] == []
