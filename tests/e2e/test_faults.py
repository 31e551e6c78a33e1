"""
A short run of the fault sequencer on both servers (docs/reliability.md): random
sequences of connects, resumes, floods, hostile frames, Redis pauses and restarts,
killed publishers and server restarts, checked by the oracle after every step.
``make faults`` runs it for longer; FAULTS_SEED and FAULTS_CI_SECONDS change this run.
"""

import os

import pytest

from faults.run import run

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
    from faults.run import make_site
    from faults.sequencer import Op, run_sequence

    site, drop = make_site(tmp_path)
    sequence = [
        Op("publish_admin", {"server": 1, "seed": 1607433449, "count": 14}),
        Op("redis_restart", {"server": 0, "seed": 1023719173}),
        Op("connect", {"server": 1, "seed": 2093340989, "count": 2}),
    ]
    try:
        done, violation = await run_sequence(kind, sequence, site, log=lambda *args: None)
    finally:
        drop()
    assert violation is None, violation
    assert done == 3
