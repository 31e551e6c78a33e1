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
    seed = int(os.environ.get("FAULTS_SEED", "1"))
    status = await run(seconds, seed, [kind], ops=25, shrink_budget=120)
    report = capsys.readouterr().out
    assert status == 0, report
    assert "no violation" in report
