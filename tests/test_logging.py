"""What the app logs, at which level: what an operator's LOGGING config filters on."""

import logging

import pytest

from broadcast import apublish
from broadcast.logdefaults import install_default_handler
from broadcast.publishing.api import PublishFailed
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


def test_a_project_without_logging_for_the_app_still_sees_its_lines(capsys):
    """Django's default LOGGING covers its own logger only; the app brings a handler."""
    name = "broadcast.unconfigured"
    logger = logging.getLogger(name)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # as in a project with Django's default LOGGING
    try:
        assert install_default_handler(name)
        logging.getLogger(f"{name}.publishing").info("Published id=%s", 7)
        assert not install_default_handler(name)  # once
    finally:
        root.handlers[:] = saved
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
    assert "INFO broadcast.unconfigured.publishing: Published id=7" in capsys.readouterr().err


def test_a_project_that_configures_logging_keeps_control():
    logger = logging.getLogger("broadcast.configured")
    logger.addHandler(logging.NullHandler())
    try:
        assert not install_default_handler("broadcast.configured")
        assert logger.level == logging.NOTSET
    finally:
        logger.handlers.clear()
