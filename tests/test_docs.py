"""The reference pages name everything the code has: settings, frames, close codes."""

import re
import tomllib
from pathlib import Path

from broadcast.clients import access, closing
from broadcast.clients import consumer as consumers
from broadcast.conf import Settings
from broadcast.stream import registry, shutdown

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
        for module in (access, consumers, closing, registry, shutdown)
        for name, value in vars(module).items()
        if name.startswith("CLOSE_") and isinstance(value, int)
    }
    assert {4001, 4003, 4008, 1012, 1013} <= codes
    text = page("protocol.md")
    assert sorted(code for code in codes if f"| {code} |" not in text) == []


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def bounds(package: str) -> tuple[str, str]:
    """The ``>=low,<high`` pyproject.toml allows for ``package``."""
    project = pyproject()["project"]
    requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    for requirement in requirements:
        match = re.match(rf"{re.escape(package)}(\[\w+\])?>=([\d.]+),<([\d.]+)", requirement)
        if match:
            return match.group(2), match.group(3)
    raise AssertionError(f"{package} is not in pyproject.toml")


def below(version: str) -> str:
    """The release line before ``version``'s: 0.55 -> 0.54, 6.2 -> 6.1, 9 -> 8."""
    *head, last = version.split(".")
    return ".".join([*head, str(int(last) - 1)])


def test_the_quick_start_names_the_wheel_pyproject_builds():
    project = pyproject()["project"]
    wheel = f"{project['name'].replace('-', '_')}-{project['version']}-py3-none-any.whl"
    assert f"dist/{wheel}[uvicorn]" in page("quickstart.md")


def test_the_supported_versions_are_the_ones_pyproject_allows():
    readme = (ROOT / "README.md").read_text()
    supported = " ".join(readme.split("## Supported versions", 1)[1].split("##")[0].split())
    django_low, django_high = bounds("Django")
    uvicorn_low, uvicorn_high = bounds("uvicorn")
    redis_low, redis_high = bounds("redis")
    daphne_low, _ = bounds("daphne")
    assert f"Django {django_low} LTS" in supported and below(django_high) in supported
    assert f"uvicorn {uvicorn_low}-{below(uvicorn_high)}" in supported
    assert f"redis-py {redis_low} to {below(redis_high)}" in supported
    assert f"daphne {daphne_low}" in supported
    needs = next(line for line in page("quickstart.md").splitlines() if line.startswith("You need"))
    assert django_low in needs and below(django_high) in needs


def test_the_proven_uvicorn_range_is_the_one_pyproject_allows_and_the_docs_show():
    from broadcast.seams.servers.uvicorn import PROVEN

    low, high = bounds("uvicorn")
    assert (PROVEN[0].distribution, PROVEN[0].lowest, PROVEN[0].below) == ("uvicorn", low, high)
    text = " ".join(page("operations.md").split())
    assert f"outside the proven range >={low},<{high}" in text
