"""broadcast.tuning: full garbage collections paced by closed connections."""

import asyncio
import gc
import weakref

import pytest

from broadcast import tuning
from broadcast.tuning import GarbagePacer
from tests.clients import connect


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def cyclic_garbage() -> weakref.ref:
    return weakref.ref(Node())


@pytest.fixture
def collector_off():
    gc.disable()
    yield
    gc.enable()


@pytest.fixture
def restore_gc():
    thresholds = gc.get_threshold()
    pacer = tuning._pacer
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    tuning._pacer = pacer


def test_garbage_is_collected_once_enough_connections_closed(collector_off):
    pacer = GarbagePacer(closes_per_collection=3)
    garbage = cyclic_garbage()
    pacer.connection_closed(still_open=0)
    pacer.connection_closed(still_open=0)
    assert garbage() is not None
    pacer.connection_closed(still_open=0)
    assert garbage() is None
    assert pacer.collections == 1


def test_with_many_open_connections_a_quarter_of_them_must_close_first(collector_off):
    # A full collection walks every open connection's objects: its cost is spread
    # over a number of closes that grows with them.
    pacer = GarbagePacer(closes_per_collection=3)
    for _ in range(9):
        pacer.connection_closed(still_open=40)
    assert pacer.collections == 0
    pacer.connection_closed(still_open=40)
    assert pacer.collections == 1


async def test_inside_the_event_loop_the_collection_runs_after_the_close(collector_off):
    pacer = GarbagePacer(closes_per_collection=1)
    garbage = cyclic_garbage()
    pacer.connection_closed(still_open=0)
    assert garbage() is not None  # not in the middle of the closing handler
    await asyncio.sleep(0)
    assert garbage() is None


def test_tune_gc_freezes_and_makes_automatic_full_collections_rarer(restore_gc):
    gc.set_threshold(700, 10, 10)
    tuning.tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (700, 10, tuning.OLD_GENERATION_THRESHOLD)
    assert tuning.pacer() is not None


def test_tune_gc_without_pacing_keeps_pythons_schedule(restore_gc):
    gc.set_threshold(700, 10, 10)
    tuning._pacer = None
    tuning.tune_gc(young_generation=7000, pace_full_collections=False)
    assert gc.get_threshold() == (7000, 10, 10)
    assert tuning.pacer() is None
    tuning.connection_closed(still_open=0)  # nothing to pace: a no-op


@pytest.mark.django_db(transaction=True)
async def test_the_hub_reports_every_closed_client_to_the_pacer(hub, monkeypatch):
    pacer = GarbagePacer(closes_per_collection=2)
    monkeypatch.setattr(tuning, "_pacer", pacer)
    clients = [await connect() for _ in range(3)]
    await clients[0].disconnect()
    assert (pacer.closes, pacer.collections) == (1, 0)
    await clients[1].disconnect()
    await asyncio.sleep(0)
    assert (pacer.closes, pacer.collections) == (0, 1)
    await clients[2].disconnect()
    assert pacer.closes == 1
