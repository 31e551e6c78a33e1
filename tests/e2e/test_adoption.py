"""
The quick start, followed as a new user follows it: the wheel installed into a fresh
virtual environment with the extras docs/quickstart.md names, a fresh
``django-admin startproject mysite``, the page's snippets applied as read from the page
(each marked ``<!-- adopt: PHASE ACTION [FILE] -->``), the server it names started,
and its listener script receiving what the admin and ``manage.py broadcast`` publish.
A snippet that is wrong in the docs fails here. Along the way, the mistakes a newcomer
makes get the one-line errors and checks the app promises.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import ROOT, Browser, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

QUICKSTART = ROOT / "docs" / "quickstart.md"
MARKED = re.compile(r"<!-- adopt: (\w+) (\w+)(?: (\S+))? -->\n```\w*\n(.*?)\n```", re.DOTALL)
DOCS_PORT, DOCS_REDIS = "8000", "redis://127.0.0.1:6379/0"
ADOPTION_REDIS = "redis://127.0.0.1:6379/12"
ADMIN = {"DJANGO_SUPERUSER_USERNAME": "ada", "DJANGO_SUPERUSER_PASSWORD": "quick-start-pw"}


@dataclass
class Snippet:
    phase: str
    action: str
    target: str | None
    text: str


def snippets(phase: str) -> list[Snippet]:
    found = [Snippet(*match.groups()) for match in MARKED.finditer(QUICKSTART.read_text())]
    assert found, f"no <!-- adopt: ... --> snippets in {QUICKSTART}"
    return [snippet for snippet in found if snippet.phase == phase]


def one(phase: str, action: str) -> Snippet:
    (snippet,) = [s for s in snippets(phase) if s.action == action]
    return snippet


class Project:
    """``mysite`` in a fresh virtual environment, driven the way the quick start says."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env_dir = tmp / "venv"
        self.bin = self.env_dir / "bin"
        self.dir = tmp / "mysite"
        self.port = free_port()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DJANGO", "BROADCAST", "REDIS", "DATABASE", "PYTHON"))
        }
        self.env.update(ADMIN, DJANGO_SUPERUSER_EMAIL="ada@example.com")
        self.env["PATH"] = f"{self.bin}{os.pathsep}{self.env['PATH']}"

    def run(self, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(arg) for arg in argv], cwd=self.dir if self.dir.exists() else self.tmp,
            env=self.env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def install(self, snippet: Snippet, wheel: Path) -> None:
        """The page's ``pip install "CHECKOUT[extras]"``, from the wheel of that checkout."""
        argv = shlex.split(snippet.text)
        assert argv[:2] == ["pip", "install"] and len(argv) == 3, snippet.text
        extras = re.fullmatch(r".+?(\[[\w,]+\])", argv[2])
        assert extras, f"the quick start installs no extra: {snippet.text}"
        self.run(self.bin / "pip", "install", "--quiet", f"{wheel}{extras.group(1)}")

    def apply(self, snippet: Snippet) -> None:
        path = self.dir / snippet.target
        text = snippet.text.replace(DOCS_REDIS, ADOPTION_REDIS)
        if snippet.action == "append":
            path.write_text(path.read_text() + "\n\n" + text + "\n")
        else:
            assert snippet.action == "replace", snippet.action
            path.write_text(text + "\n")

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(self.bin / "python", "manage.py", *args, check=check)

    def shell(self, snippet: Snippet) -> list[subprocess.CompletedProcess]:
        """Each command of a shell snippet, ``python`` being the project's."""
        results = []
        for line in snippet.text.splitlines():
            argv = shlex.split(line)
            assert argv[0] == "python", line
            if argv[-1] == "createsuperuser":
                argv.append("--noinput")  # the test answers its prompts from ADMIN
            results.append(self.run(self.bin / "python", *argv[1:]))
        return results

    def serve(self) -> Server:
        argv = shlex.split(one("memory", "serve").text)
        argv[argv.index("--port") + 1] = str(self.port)
        return Server(self, [str(self.bin / argv[0]), *argv[1:]])

    def listen(self) -> Listener:
        snippet = one("memory", "listen")
        script = self.dir / snippet.target
        script.write_text(snippet.text.replace(f":{DOCS_PORT}", f":{self.port}"))
        return Listener([str(self.bin / "python"), str(script)], self)


class Server:
    def __init__(self, project: Project, argv: list[str]) -> None:
        self.log_path = project.tmp / f"server-{time.monotonic_ns()}.log"
        self.base = f"http://127.0.0.1:{project.port}"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                argv, cwd=project.dir, env=project.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while not self.answers():
            assert self.process.poll() is None, f"the server exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"the server did not answer:\n{self.log()}"
            time.sleep(0.2)

    def answers(self) -> bool:
        try:
            return Browser(self.base).get("/admin/login/")[0] == 200
        except OSError:  # not listening yet
            return False

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


class Listener:
    """The quick start's listen.py, its printed frames collected as they come."""

    def __init__(self, argv: list[str], project: Project) -> None:
        self.process = subprocess.Popen(
            argv, cwd=project.dir, env=project.env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.frames: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        welcome = self.next()
        assert welcome["type"] == "hub.welcome", welcome

    def _read(self) -> None:
        for line in self.process.stdout:
            self.frames.put(json.loads(line))

    def next(self, timeout: float = 15) -> dict:
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            error = self.process.stderr.read()
            raise AssertionError(f"listen.py printed nothing:\n{error}") from None

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(5)


def publish_from_admin(server: Server, text: str) -> None:
    browser = Browser(server.base)
    browser.login(ADMIN["DJANGO_SUPERUSER_USERNAME"], ADMIN["DJANGO_SUPERUSER_PASSWORD"])
    status, page = browser.post(
        "/admin/broadcast/broadcast/add/",
        {"type": "announcement", "payload": json.dumps({"text": text}), "_save": "Save"},
    )
    assert status == 200 and "was added successfully" in page, (status, page[-2000:])


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


async def refused_without_origin(port: int) -> int:
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws/broadcast/"):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def build_wheel(tmp: Path) -> Path:
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, ROOT],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("django_broadcast_hub-*.whl")
    return wheel


@pytest.fixture
def adoption_redis():
    client = redis.Redis.from_url(ADOPTION_REDIS, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.exceptions.RedisError as exc:
        pytest.fail(f"Redis is not answering at {ADOPTION_REDIS} ({exc}); this test needs it.")
    yield
    client.flushdb()


async def test_a_new_project_adopts_the_app_by_following_the_quick_start(tmp_path, adoption_redis):
    wheel = build_wheel(tmp_path)
    project = Project(tmp_path)
    venv.create(project.env_dir, with_pip=True)

    # 1-6 on the in-memory layer, as the page says.
    project.install(one("memory", "install"), wheel)
    project.run(project.bin / "django-admin", "startproject", "mysite")
    for snippet in snippets("memory"):
        if snippet.action in ("append", "replace"):
            project.apply(snippet)
    project.shell(one("memory", "run"))
    assert "no issues" in project.manage("check").stdout
    server = project.serve()
    listener = project.listen()
    try:
        # 7: the admin publishes inside the server process; the script receives it.
        publish_from_admin(server, "from the admin")
        received = listener.next()
        assert (received["id"], received["type"], received["payload"]) == (
            1, "announcement", {"text": "from the admin"},
        )  # fmt: skip
        # The JavaScript client, under uvicorn, in development (step 4's static handler).
        status, script = Browser(server.base).get("/static/broadcast/broadcast.js")
        assert status == 200 and "BroadcastClient" in script
        # The app's log lines reach the console without any LOGGING of the project's.
        assert "INFO broadcast.publishing.send: Published broadcast id=1 type=announcement" in (
            server.log()
        )

        # A script without an Origin header: 403, and the log says why.
        assert await refused_without_origin(project.port) == 403
        assert "Refused a WebSocket with no Origin header (403)" in server.log()

        # manage.py broadcast on the in-memory layer: one line naming the setting.
        refusal = one_line_error(project.manage("broadcast", "news", "{}", check=False))
        assert "Set CHANNEL_LAYERS['default'] to channels_redis" in refusal
        assert "REDIS_URL" not in refusal  # hubsite's variable; this project has none
        # ... and a typo there is judged as a typo, not as the layer.
        typo = one_line_error(project.manage("broadcast", "news", "{oops", check=False))
        assert typo.startswith("CommandError: Invalid JSON in the payload argument")

        # check --deploy speaks of the app.
        deploy = project.manage("check", "--deploy", check=False).stderr
        for check_id in ("broadcast.W002", "broadcast.W003", "broadcast.W004", "security.W018"):
            assert check_id in deploy, deploy
    finally:
        listener.stop()
        server.stop()

    # Redis configured before its extra is installed: the check and the command say so.
    project.apply(one("redis", "append"))
    unloadable = project.manage("check", check=False)
    assert unloadable.returncode == 1
    assert "broadcast.E024" in unloadable.stderr
    assert "pip install 'django-broadcast-hub[redis]'" in unloadable.stderr
    # The command runs the system checks first: the same error, no traceback.
    missing = project.manage("broadcast", "news", "{}", check=False)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr
    assert "(broadcast.E024)" in missing.stderr
    assert "which cannot be imported (No module named 'channels_redis')" in missing.stderr

    # More than one process: the [redis] extra, then the command reaches the server.
    project.install(one("redis", "install"), wheel)
    assert "no issues" in project.manage("check").stdout
    server = project.serve()
    listener = project.listen()
    try:
        (sent,) = project.shell(one("redis", "publish"))
        assert sent.stdout.strip() == "Sent broadcast id=2 type='announcement'."
        received = listener.next()
        assert (received["id"], received["payload"]) == (2, {"text": "from the command line"})
        publish_from_admin(server, "from the admin, over Redis")
        assert listener.next()["payload"] == {"text": "from the admin, over Redis"}
    finally:
        listener.stop()
        server.stop()
