"""What the app logs, at which level: what an operator's LOGGING config filters on."""

import logging

import pytest

from broadcast import apublish
from broadcast.publishing import PublishFailed
from tests.clients import connect, frame

pytestmark = pytest.mark.django_db(transaction=True)


def lines(caplog, level):
    return [r.getMessage() for r in caplog.records if r.levelno == level]


async def test_connects_and_disconnects_at_debug_publishes_at_info(caplog, hub):
    caplog.set_level(logging.DEBUG, logger="broadcast")
    client = await connect()
    await apublish("news", {"n": 1})
    await apublish("news", {"n": 2}, persist=False)
    await frame(client)
    await frame(client)
    await client.disconnect()
    debug, info = lines(caplog, logging.DEBUG), lines(caplog, logging.INFO)
    assert sum("Client connected" in line for line in debug) == 1
    assert sum("Client disconnected" in line for line in debug) == 1
    assert [line for line in info if "Published" in line] == [
        "Published broadcast id=1 type=news",
        "Published ephemeral broadcast type=news",
    ]
    assert not lines(caplog, logging.WARNING)


async def test_a_channel_layer_error_is_a_warning(caplog, unreachable_layer):
    with pytest.raises(PublishFailed):
        await apublish("news", {"n": 1})
    (warning,) = lines(caplog, logging.WARNING)
    assert "failed" in warning and "Error" in warning
