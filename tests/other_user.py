"""Another user on the same host, for the tests of what one can do to the project: commands run as a real
second uid (`nobody`, through setpriv, since the tests run as root), and a fake S3 server that user runs.
Tests skip with the reason where there is no second uid to be."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

OTHER_UID = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]  # nobody


@functools.cache
def other_users_python() -> str | None:
    """A Python interpreter the other user may run (this venv's may sit in a folder only root can enter)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if Path(candidate).is_file():
            ran = subprocess.run([*OTHER_UID, candidate, "-c", "pass"], capture_output=True)
            if ran.returncode == 0:
                return candidate
    return None


def require_other_user(needs_python: bool = False) -> None:
    """Skip the test unless a real second uid can run commands here (root with setpriv)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run commands as a second uid")
    if needs_python and other_users_python() is None:
        pytest.skip("no Python interpreter the second uid may run")


def run_as_other_user(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*OTHER_UID, *command], capture_output=True, **kwargs)


# A permissive S3 look-alike: any signature passes, buckets are empty, uploads "succeed". It logs the method
# and path of every request it gets, so a test sees what a client sent it.
FAKE_S3 = r"""
import http.server, ssl, sys
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
EMPTY_LIST = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name><KeyCount>0</KeyCount>'
              b'<IsTruncated>false</IsTruncated></ListBucketResult>')
BUCKETS = (b'<?xml version="1.0" encoding="UTF-8"?><ListAllMyBucketsResult><Owner><ID>x</ID></Owner>'
           b'<Buckets></Buckets></ListAllMyBucketsResult>')
class Fake(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _answer(self, status, body=b""):
        print(self.command, self.path, flush=True)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(status)
        self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    def do_GET(self):
        self._answer(200, BUCKETS if self.path.split("?")[0] == "/" else EMPTY_LIST)
    def do_HEAD(self):
        self._answer(404 if self.path.strip("/").count("/") else 200)
    def do_PUT(self):
        self._answer(200)
    def do_POST(self):
        self._answer(200)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Fake)
if cert != "-":
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
print("listening", flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def fake_s3_server(port: int, certificate: tuple[Path, Path] | None = None) -> Iterator[list[str]]:
    """The other user's fake S3 server on 127.0.0.1:`port` (plain HTTP, or TLS with `certificate`, a
    (cert, key) pair it can read) for the block; yields the list of requests it got ("PUT /b/k"), filled
    in once the block ends."""
    cert, key = (str(p) for p in certificate) if certificate else ("-", "-")
    proc = subprocess.Popen([*OTHER_UID, other_users_python(), "-c", FAKE_S3, str(port), cert, key],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    requests: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fake S3 server did not start: {proc.stdout.read()}")
            time.sleep(0.05)
        yield requests
    finally:
        proc.kill()
        out, _ = proc.communicate()
        requests.extend(line for line in out.splitlines() if line and line != "listening")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def attackers_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, from a CA of the other user's own, where that user can read
    them (`folder` and its parents must let others in)."""
    from infra.s3 import tls

    made = tls.ensure_certificates(folder)
    for path in (folder, folder / "tls", made["cert"], made["key"]):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return made["cert"], made["key"]


# Binds 127.0.0.1:PORT if it can ("bound", else "refused"), then answers every request with 200 "true"
# (enough for a health check) and reports whether it carried an Authorization header.
GRAB_PORT = r"""
import socket, sys
listener = socket.socket()
try:
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(16)
except OSError:
    print("refused", flush=True)
    sys.exit(0)
print("bound", flush=True)
listener.settimeout(30)
while True:
    try:
        conn, _ = listener.accept()
    except OSError:
        break
    head = conn.recv(65536).split(b"\r\n\r\n")[0].decode("latin-1")
    print("request", "authorization:" in head.lower(), head.splitlines()[0] if head else "", flush=True)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\ntrue")
    conn.close()
"""


def grab_port(port: int) -> subprocess.Popen:
    """The other user tries to take 127.0.0.1:`port` now; returns once it knows whether it could (its
    first line of output, "bound" or "refused", read already; each request it got follows)."""
    grabber = subprocess.Popen([*OTHER_UID, other_users_python(), "-c", GRAB_PORT, str(port)],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    grabber.first_line = grabber.stdout.readline().strip()
    return grabber
