"""
nginx in front of the test's server processes, run from the exact ```nginx block of
docs/operations.md ("## nginx"), with only what a test machine must change replaced.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from harness.servers import ROOT, free_port

NGINX = os.environ.get("E2E_NGINX", "/usr/sbin/nginx")
HOSTNAME = "hub.example.com"
ORIGIN = f"https://{HOSTNAME}"  # what a browser on the site sends
DOCS = ROOT / "docs" / "operations.md"


def docs_block(path: Path = DOCS) -> str:
    """The ```nginx code block under "## nginx", as the reader copies it."""
    parts = path.read_text().split("\n## nginx\n", 1)
    assert len(parts) == 2, f"no '## nginx' section in {path}"
    section = parts[1].split("\n## ", 1)[0]
    block = re.search(r"^```nginx\n(.*?)^```$", section, re.S | re.M)
    assert block, f"no ```nginx block under '## nginx' in {path}"
    return block.group(1)


def _replace(text: str, pattern: str, new: str, what: str) -> str:
    # Loudly, naming the line: a docs edit the test does not know must fail here.
    result, count = re.subn(pattern, new, text, flags=re.M)
    assert count, f"docs/operations.md's nginx block has no line {what}"
    return result


def localised(block: str, upstreams: list[int], https_port: int, http_port: int,
              tmp: Path) -> str:  # fmt: skip
    """The docs block with the ports, certificate, static and log paths of this machine."""
    servers = "".join(f"    server 127.0.0.1:{port};\n" for port in upstreams)
    block = _replace(
        block, r"(?:^    server 127\.0\.0\.1:800\d;\n)+", servers, "'server 127.0.0.1:800N;'"
    )
    block = _replace(
        block, r"^(\s*)listen 443 ssl http2;", rf"\1listen 127.0.0.1:{https_port} ssl http2;",
        "'listen 443 ssl http2;'",
    )  # fmt: skip
    block = _replace(
        block, r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{http_port};", "'listen 80;'"
    )
    for name, file in (("ssl_certificate", "cert.pem"), ("ssl_certificate_key", "key.pem")):
        block = _replace(
            block, rf"^(\s*{name}\s+)/etc/letsencrypt/\S+;", rf"\g<1>{tmp / file};", f"'{name}'"
        )
    block = _replace(
        block, r"^(\s*alias\s+)/srv/hub/staticfiles/;", rf"\g<1>{tmp / 'static'}/;", "'alias'"
    )
    for name in ("access_log", "error_log"):
        block = _replace(
            block, rf"^(\s*{name}\s+)/var/log/nginx/", rf"\g<1>{tmp / 'logs'}/", f"'{name}'"
        )
    return block


class Nginx:
    """nginx as documented, TLS on ``port`` for ``hub.example.com``, proxying to ``upstreams``."""

    def __init__(self, upstreams: list[int], docs: Path = DOCS) -> None:
        self.upstreams, self.docs = upstreams, docs
        self.port, self.http_port = free_port(), free_port()
        # Its own directory, readable by all: run as root, the workers are `nobody`,
        # who cannot enter pytest's private tmp directories.
        self.dir = Path(tempfile.mkdtemp(prefix="hub-nginx-"))
        self.dir.chmod(0o755)
        self.block = ""
        self.process: subprocess.Popen | None = None
        self._stderr = None

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    def start(self) -> Nginx:
        try:
            self._launch()
        except BaseException:
            self.stop()  # nothing left behind by a block the harness cannot run
            raise
        return self

    def _launch(self) -> None:
        for name in ("static", "logs", "temp"):
            (self.dir / name).mkdir(mode=0o755)
        self.block = localised(
            docs_block(self.docs), self.upstreams, self.port, self.http_port, self.dir
        )
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", f"/CN={HOSTNAME}", "-addext", f"subjectAltName=DNS:{HOSTNAME}",
             "-keyout", str(self.dir / "key.pem"), "-out", str(self.dir / "cert.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
        (self.dir / "hub.conf").write_text(self.block)
        (self.dir / "nginx.conf").write_text(self._main_conf())
        self._stderr = open(self.logs / "stderr.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
             "-e", str(self.logs / "startup.log"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=self._stderr,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited:\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"nginx did not listen:\n{self.error_log()}") from None
                time.sleep(0.05)

    def _main_conf(self) -> str:
        temp = "".join(
            f"    {name}_temp_path {self.dir / 'temp' / name};\n"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # The http-wide access log in the combined format, as Debian's nginx.conf has:
        # the docs' own access_log lines must replace it.
        return (
            f"pid {self.dir / 'nginx.pid'};\n"
            f"error_log {self.logs / 'main-error.log'};\n"
            "events {}\n"
            "http {\n"
            f"    access_log {self.logs / 'http-access.log'};\n"
            f"{temp}"
            f"    include {self.dir / 'hub.conf'};\n"
            "}\n"
        )

    def access_log(self) -> str:
        return (self.logs / "hub-access.log").read_text()

    def every_log(self) -> str:
        """Every file nginx wrote to, its config's inherited logs too."""
        return "".join(path.read_text() for path in sorted(self.logs.iterdir()))

    def error_log(self) -> str:
        """What nginx said about itself: its error logs and its stderr."""
        names = [path for path in sorted(self.logs.iterdir()) if "error" in path.name]
        return "".join(path.read_text() for path in [*names, self.logs / "stderr.log"])

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this nginx's certificate (give server_hostname)."""
        return ssl.create_default_context(cafile=str(self.dir / "cert.pem"))

    @property
    def ws_url(self) -> str:
        return f"wss://{HOSTNAME}:{self.port}/ws/broadcast/"

    async def client(self, query: str = "", origin: str | None = ORIGIN):
        """A WebSocket client through nginx (TLS) whose welcome frame has been read."""
        ws = await connect(
            self.ws_url + query, host="127.0.0.1", port=self.port, ssl=self.ssl_context(),
            origin=origin, max_size=2**22,
        )  # fmt: skip
        ws.welcome = json.loads(await ws.recv())
        assert ws.welcome["type"] == "hub.welcome"
        return ws

    def connect(self, timeout: float = 10, alpn: list[str] | None = None) -> ssl.SSLSocket:
        """A TLS connection to nginx, handshake done, as a client of hub.example.com."""
        context = self.ssl_context()
        if alpn:
            context.set_alpn_protocols(alpn)
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return context.wrap_socket(sock, server_hostname=HOSTNAME)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
        """One HTTPS request through nginx with Host: hub.example.com: (status, body)."""
        conn = http.client.HTTPSConnection(HOSTNAME, self.port, timeout=10)
        conn.sock = self.connect()  # to 127.0.0.1, whatever hub.example.com resolves to
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        try:
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # nginx's fast shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._stderr:
            self._stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
