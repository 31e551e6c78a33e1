"""The fault sequencer's oracle: what it counts as owed to a client (its model, no servers)."""

from types import SimpleNamespace

from faults.oracle import Client


def client_welcomed(welcome_id: int, requested: int) -> Client:
    failures: list[str] = []
    oracle = SimpleNamespace(fail=failures.append)
    client = Client(oracle, SimpleNamespace(kind="uvicorn", port=1), f"?last_id={requested}")
    client.failures = failures
    client.start = client.last_seen = min(requested, welcome_id)  # as _welcomed does
    return client


def test_a_resume_past_the_welcome_that_the_hub_accepts_owes_nothing_before_it():
    # Found on PostgreSQL (seed 2, a database cut): a client resumed with ?last_id=50
    # on a process welcoming it at 47, whose relay then passed 50; the hub rightly sent
    # 51 on, and the oracle counted 48-50 as lost.
    client = client_welcomed(47, 50)
    client.take({"type": "hub.resumed", "id": None, "payload": {"from": 50, "count": 0}})
    client.take({"type": "news", "id": 51, "topic": None, "payload": {}})
    assert (client.start, client.last_seen, client.gaps) == (50, 51, [])
    assert client.failures == []


def test_a_gap_after_a_resume_within_the_welcome_is_still_a_gap():
    client = client_welcomed(47, 40)
    client.take({"type": "hub.resumed", "id": None, "payload": {"from": 40, "count": 0}})
    client.take({"type": "news", "id": 45, "topic": None, "payload": {}})
    assert client.gaps == [(40, 45)]
