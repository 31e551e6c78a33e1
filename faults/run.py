"""
Run the fault sequencer for a time, on one or both servers, from a seed.

    python -m faults.run --seconds 120 --seed 1 --servers daphne,uvicorn
    make faults FAULTS_SECONDS=1800 FAULTS_SEED=7

Each sequence of ``--ops`` operations runs on two fresh server processes of one
kind, sharing a private Redis and a fresh database. Sequence ``i`` of a run uses the
seed ``seed + i``, so every sequence can be run again alone; the seed's parity picks
channels-redis's layer (odd: pub/sub, which queues bursts in the process so that the
relay coalesces them; even: core), and the seed's second bit the sweep chunk (set:
one client a turn of the loop, so that every fan-out is a sweep). A violation prints
the seed and the shortest sequence that still fails, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsite.settings")


# channels-redis's two layers (hubsite's REDIS_LAYER), by a sequence seed's parity.
LAYERS = ("core", "pubsub")


def layer_of(sequence_seed: int) -> str:
    return LAYERS[sequence_seed % 2]


def sweep_chunk_of(sequence_seed: int) -> str:
    """
    Half of the sequences (both layers) sweep every fan-out to two clients or more,
    one client a turn of the loop: a sequence has a few clients a server, fewer than
    the default chunk of 64, and sweeps hold state across turns where faults land.
    """
    return "1" if (sequence_seed // 2) % 2 else "64"


def make_site(tmp: Path):
    from harness.servers import make_site as make_e2e_site

    return make_e2e_site(tmp, heartbeat=0.5)


async def run(seconds: float, seed: int, kinds: list[str], ops: int, shrink_budget: float) -> int:
    from faults.sequencer import generate, raise_if_cancelled, run_sequence, shrink

    deadline = time.monotonic() + seconds
    totals = {kind: [0, 0] for kind in kinds}  # sequences, operations
    index = 0
    while time.monotonic() < deadline:
        for kind in kinds:
            raise_if_cancelled()
            sequence_seed = seed + index
            sequence = generate(sequence_seed, ops)
            with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
                site, drop = make_site(Path(tmp))
                layer = layer_of(sequence_seed)
                chunk = sweep_chunk_of(sequence_seed)
                site = site.with_env(
                    REDIS_LAYER=layer, HUB_CONSTANTS=f"broadcast.stream.fanout.SWEEP_CHUNK={chunk}"
                )
                setup = f"{layer} layer, sweep chunk {chunk}"
                try:
                    done, violation = await run_sequence(kind, sequence, site, log=_quiet)
                    if violation is None:
                        totals[kind][0] += 1
                        totals[kind][1] += done
                        print(
                            f"{kind} seed {sequence_seed} ({setup}): {done} operations, "
                            "no violation "
                            f"({totals[kind][0]} sequences, {totals[kind][1]} operations so far)",
                            flush=True,
                        )
                        continue
                    print(
                        f"\nVIOLATION on {kind} ({setup}), seed {sequence_seed}, "
                        f"after {done} operations:"
                    )
                    print(f"  {violation}", flush=True)
                    failing = sequence[:done]
                    print(f"Shrinking {len(failing)} operations (up to {shrink_budget:.0f}s)...")
                    shortest = await shrink(kind, failing, site, shrink_budget, log=print)
                    print(f"Shortest failing sequence, seed {sequence_seed}:")
                    for op in shortest:
                        print(f"  {op}")
                    for number, log in enumerate(violation.logs):
                        print(f"--- server {number} log (last 40 lines) ---")
                        print("\n".join(log.splitlines()[-40:]))
                    return 1
                finally:
                    drop()
        index += 1
    for kind, (sequences, operations) in totals.items():
        print(f"{kind}: {sequences} sequences, {operations} operations, no violation")
    return 0


def _quiet(*args: object) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("FAULTS_SECONDS", 120))
    )
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FAULTS_SEED", 1)))
    parser.add_argument("--servers", default=os.environ.get("FAULTS_SERVERS", "daphne,uvicorn"))
    parser.add_argument("--ops", type=int, default=40, help="operations per sequence")
    parser.add_argument("--shrink-seconds", type=float, default=600)
    args = parser.parse_args()
    kinds = [kind for kind in args.servers.split(",") if kind]
    unknown = set(kinds) - {"daphne", "uvicorn"}
    if unknown:
        parser.error(f"unknown server(s) {sorted(unknown)}; choose daphne and/or uvicorn")
    print(f"Fault sequencer: seed {args.seed}, {args.seconds:.0f}s, servers {', '.join(kinds)}")
    # SIGUSR1 prints every thread's stack, even with the event loop blocked: where a
    # run that does not stop is waiting.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        status = asyncio.run(
            until_terminated(run(args.seconds, args.seed, kinds, args.ops, args.shrink_seconds))
        )
    except asyncio.CancelledError:
        print("Stopped by SIGTERM: its servers and Redis are stopped")
        status = 128 + signal.SIGTERM
    sys.exit(status)


async def until_terminated(coroutine: Coroutine[Any, Any, int]) -> int:
    """
    Run ``coroutine`` until SIGTERM cancels it, which stops the sequence's servers and
    Redis (and resumes a stalled server) as Ctrl-C does; by default the signal would
    end this process at once and leave them running.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGUSR2, print_tasks)
    return await coroutine


def print_tasks() -> None:
    """Where each of the run's tasks waits: SIGUSR2 asks for it (SIGUSR1 for the threads)."""
    for task in asyncio.all_tasks():
        print(f"Task {task.get_name()}, awaiting:")
        awaited: Any = task.get_coro()
        while awaited is not None and hasattr(awaited, "cr_frame"):
            frame = awaited.cr_frame
            if frame is not None:
                print(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            awaited = awaited.cr_await
        if awaited is not None:
            print(f"  {awaited!r}"[:300])
    sys.stdout.flush()


if __name__ == "__main__":
    main()
