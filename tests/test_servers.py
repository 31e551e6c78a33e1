"""The seam to the servers' private parts: the probes, the switch, the public path."""

import logging

import pytest

from broadcast.seams import servers
from broadcast.seams.servers import base
from broadcast.seams.servers import uvicorn as uvicorn_seam
from broadcast.seams.servers.base import Proven
from tests.clients import uvicorn_connection


@pytest.fixture
def fresh_probe(monkeypatch, settings):
    """The uvicorn seam as a new process finds it: not probed yet, the fast path on."""
    monkeypatch.setattr(uvicorn_seam, "probed", None)
    settings.BROADCAST_FAST_PATH = True  # whatever the environment says (CI's public leg)


async def test_uvicorn_gets_a_direct_writer_when_the_probe_passes(fresh_probe):
    send, client = await uvicorn_connection()
    try:
        assert type(servers.direct_writer(send)).__name__ == "SansioWriter"
        assert uvicorn_seam.probed.safe
    finally:
        client.close()


async def test_the_fast_path_switched_off_means_the_asgi_send(fresh_probe, settings):
    settings.BROADCAST_FAST_PATH = False
    send, client = await uvicorn_connection()
    try:
        assert servers.direct_writer(send) is None
        assert uvicorn_seam.probed is None  # not even probed
    finally:
        client.close()


async def test_a_version_outside_the_proven_range_means_one_warning_and_the_asgi_send(
    fresh_probe, monkeypatch, caplog
):
    installed = Proven("uvicorn", "0", "1").installed()
    monkeypatch.setattr(uvicorn_seam, "PROVEN", (Proven("uvicorn", "0.1", "0.2"),))
    caplog.set_level(logging.WARNING, logger="broadcast.seams.servers")
    for _ in range(2):
        send, client = await uvicorn_connection()
        try:
            assert servers.direct_writer(send) is None
        finally:
            client.close()
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        f"uvicorn fast path off (uvicorn {installed} is outside the proven range "
        ">=0.1,<0.2); using the public path"
    ]


async def test_a_missing_private_name_means_the_asgi_send(fresh_probe, monkeypatch, caplog):
    monkeypatch.setattr(
        uvicorn_seam, "PROTOCOL_NAMES", (*uvicorn_seam.PROTOCOL_NAMES, "renamed_in_a_release")
    )
    send, client = await uvicorn_connection()
    try:
        assert servers.direct_writer(send) is None
    finally:
        client.close()
    assert "missing WebSocketsSansIOProtocol.renamed_in_a_release" in caplog.text


def test_a_probe_that_raises_answers_unsafe_rather_than_raising(caplog):
    def missing():
        raise ImportError("No module named 'websockets.protocol'")

    probed = base.probe("uvicorn", (), missing)
    assert not probed.safe
    assert "ImportError" in probed.reason and "uvicorn fast path off" in caplog.text


@pytest.mark.parametrize(
    ("version", "admitted"),
    [("4.2.3", True), ("4.10", True), ("4.2.2", False), ("5.0", False), ("5.0rc1", False)],
)
def test_proven_ranges_compare_releases_numerically(version, admitted):
    assert Proven("daphne", "4.2.3", "5").admits(version) is admitted


def test_an_unknown_server_gets_the_asgi_send():
    async def send(message):
        pass

    assert servers.direct_writer(send) is None
