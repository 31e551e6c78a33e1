"""The reference pages name everything the code has: settings, frames, close codes."""

import re
from pathlib import Path

from broadcast.clients import consumer as consumers
from broadcast.conf import Settings
from broadcast.stream import shutdown

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "broadcast"


def page(name: str) -> str:
    return (ROOT / "docs" / name).read_text(encoding="utf-8")


def test_every_setting_is_in_the_settings_reference():
    text = page("settings.md")
    missing = [s.name for s in Settings.declared() if f"| `{s.name}` |" not in text]
    assert missing == []


def test_every_frame_type_the_hub_speaks_is_in_the_protocol():
    source = "\n".join(path.read_text() for path in APP.rglob("*.py"))
    frames = set(re.findall(r'"(hub\.[a-z]+)"', source))
    assert {"hub.welcome", "hub.subscribed", "hub.subscribe", "hub.pong"} <= frames
    text = page("protocol.md")
    assert sorted(f for f in frames if f"`{f}`" not in text and f'"{f}"' not in text) == []


def test_every_close_code_is_in_the_protocol():
    codes = {
        value
        for module in (consumers, shutdown)
        for name, value in vars(module).items()
        if name.startswith("CLOSE_") and isinstance(value, int)
    }
    assert 4008 in codes and 1012 in codes
    text = page("protocol.md")
    assert sorted(code for code in codes if f"| {code} |" not in text) == []
