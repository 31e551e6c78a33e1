"""
The ``broadcast`` app as a user installs it: a wheel built from pyproject.toml,
installed with its declared dependencies into a fresh virtual environment, used by
a minimal project that is not this repository.
"""

import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

USE_IT = textwrap.dedent(
    """
    import pathlib, sys
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=[
            "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
            "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
            "channels", "broadcast",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[1]}},
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        ROOT_URLCONF="broadcast.urls",
        SECRET_KEY="packaging-test",
        STATIC_URL="static/",
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates",
                    "APP_DIRS": True, "OPTIONS": {"context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]}}],
        USE_TZ=True,
    )
    django.setup()
    import broadcast
    from django.contrib.staticfiles import finders
    from django.core.management import call_command
    from django.template.loader import get_template

    assert "site-packages" in broadcast.__file__, broadcast.__file__
    import importlib.util
    # Without extras: no server and no Redis client, and the in-memory hub works.
    for optional in ("daphne", "twisted", "uvicorn", "redis", "channels_redis"):
        assert importlib.util.find_spec(optional) is None, f"{optional} came without its extra"
    call_command("migrate", verbosity=0)
    call_command("check", fail_level="WARNING")
    assert finders.find("broadcast/broadcast.js"), "the JS client is not in the wheel"
    get_template("admin/broadcast/hubprocess/change_list.html")
    from broadcast import publish
    from broadcast.routing import websocket_urlpatterns
    from broadcast.urls import urlpatterns
    from broadcast.models import Broadcast
    row = Broadcast.objects.create(type="news", payload={"ok": True})
    print("installed and working:", broadcast.__file__, len(websocket_urlpatterns), row.pk)
    """
)


def run(*args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}"
    return result


def test_the_wheel_installs_into_a_fresh_virtualenv_and_works(tmp_path):
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT))
    (wheel,) = dist.glob("django_broadcast_hub-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in [
        "broadcast/static/broadcast/broadcast.js",
        "broadcast/templates/admin/broadcast/hubprocess/change_list.html",
        "broadcast/migrations/0001_initial.py",
        "broadcast/management/commands/broadcast.py",
        "broadcast/py.typed",
    ]:
        assert expected in names, f"{expected} is missing from {wheel.name}"
    assert not [name for name in names if name.startswith(("hubsite/", "tests/", "bench/"))]

    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", str(wheel))
    script = tmp_path / "use_it.py"
    script.write_text(USE_IT)
    result = run(python, str(script), str(tmp_path / "db.sqlite3"), cwd=tmp_path)
    assert "installed and working" in result.stdout


def test_the_version_has_a_changelog_entry():
    """A user reading CHANGELOG.md finds what changed in the version they installed."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    headings = [
        line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## ")
    ]
    assert headings[0].startswith(f"## {version} ("), headings[:2]
