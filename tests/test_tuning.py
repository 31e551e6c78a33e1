"""broadcast.stream.tuning: full garbage collections paced by closed connections in bursts."""

import asyncio
import gc
import time
import weakref

import pytest

from broadcast.stream import tuning
from broadcast.stream.tuning import BURST_OLD_GENERATION_THRESHOLD, GarbagePacer
from tests.clients import connect


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def cyclic_garbage() -> weakref.ref:
    return weakref.ref(Node())


@pytest.fixture(autouse=True)
def restore_gc():
    thresholds = gc.get_threshold()
    pacer = tuning.current_pacer()
    gc.disable()  # only explicit collections in these tests
    yield
    gc.enable()
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    tuning.use_pacer(pacer)


def bursting_pacer(**kwargs) -> GarbagePacer:
    pacer = GarbagePacer(burst_opens=3, **kwargs)
    for _ in range(3):
        pacer.connection_opened()
    assert pacer.bursting
    return pacer


async def test_a_connect_burst_makes_automatic_full_collections_rarer():
    gc.set_threshold(700, 10, 10)
    pacer = GarbagePacer(burst_opens=3)
    pacer.connection_opened()
    pacer.connection_opened()
    assert not pacer.bursting
    assert gc.get_threshold() == (700, 10, 10)
    pacer.connection_opened()
    assert pacer.bursting
    assert gc.get_threshold() == (700, 10, BURST_OLD_GENERATION_THRESHOLD)


async def test_a_quiet_window_ends_the_burst_and_restores_pythons_schedule():
    gc.set_threshold(700, 10, 10)
    pacer = bursting_pacer(burst_window=0.2)
    for _ in range(3):  # still a burst when the window is checked at 0.2 s
        pacer.connection_opened()
    await asyncio.sleep(0.3)
    assert pacer.bursting
    await asyncio.sleep(0.3)  # the window checked at 0.4 s had no opens
    assert not pacer.bursting
    assert gc.get_threshold() == (700, 10, 10)


async def test_a_burst_whose_check_never_ran_ends_at_the_next_open():
    # A loop blocked (or closed) past the check: the next open ends the burst, and
    # the stale check, if it ever runs, is cancelled rather than started twice.
    gc.set_threshold(700, 10, 10)
    pacer = bursting_pacer(burst_window=0.01)
    stale_check = pacer._check
    time.sleep(0.03)  # blocks the loop: the check cannot run
    pacer.connection_opened()
    assert not pacer.bursting
    assert stale_check.cancelled()
    assert gc.get_threshold() == (700, 10, 10)


async def test_opens_spread_over_windows_are_no_burst():
    pacer = GarbagePacer(burst_opens=3, burst_window=0.02)
    for _ in range(4):
        pacer.connection_opened()
        await asyncio.sleep(0.03)
    assert not pacer.bursting


async def test_in_a_burst_garbage_is_collected_once_enough_connections_closed():
    pacer = bursting_pacer(closes_per_collection=3)
    garbage = cyclic_garbage()
    pacer.connection_closed(still_open=0)
    pacer.connection_closed(still_open=0)
    pacer.connection_closed(still_open=0)
    assert garbage() is not None  # not in the middle of the closing handler
    await asyncio.sleep(0)
    assert garbage() is None
    assert pacer.collections == 1


async def test_with_many_open_connections_a_quarter_of_them_must_close_first():
    # A full collection walks every open connection's objects: its cost is spread
    # over a number of closes that grows with them.
    pacer = bursting_pacer(closes_per_collection=3)
    for _ in range(9):
        pacer.connection_closed(still_open=40)
    await asyncio.sleep(0)
    assert pacer.collections == 0
    pacer.connection_closed(still_open=40)
    await asyncio.sleep(0)
    assert pacer.collections == 1


async def test_outside_a_burst_closes_leave_collections_to_python():
    pacer = GarbagePacer(closes_per_collection=1, burst_opens=3)
    pacer.connection_opened()
    pacer.connection_closed(still_open=0)
    await asyncio.sleep(0)
    assert pacer.collections == 0


def test_tune_gc_freezes_and_installs_the_pacer():
    tuning.use_pacer(None)
    tuning.tune_gc()
    assert gc.get_freeze_count() > 0
    assert tuning.current_pacer() is not None


def test_tune_gc_without_pacing_keeps_pythons_schedule():
    gc.set_threshold(700, 10, 10)
    tuning.tune_gc(young_generation=7000, pace_full_collections=False)
    assert gc.get_threshold() == (7000, 10, 10)
    assert tuning.current_pacer() is None
    tuning.connection_opened()  # nothing to pace: no-ops
    tuning.connection_closed(still_open=0)


@pytest.mark.django_db(transaction=True)
async def test_the_hub_reports_every_opened_and_closed_client(hub, monkeypatch):
    pacer = GarbagePacer(closes_per_collection=2, burst_opens=3)
    tuning.use_pacer(pacer)
    clients = [await connect() for _ in range(3)]
    assert pacer.bursting
    await clients[0].disconnect()
    assert (pacer.closes, pacer.collections) == (1, 0)
    await clients[1].disconnect()
    await asyncio.sleep(0)
    assert (pacer.closes, pacer.collections) == (0, 1)
    await clients[2].disconnect()
    assert pacer.closes == 1
