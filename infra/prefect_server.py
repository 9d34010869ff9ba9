"""Prefect's API server for one run, on a port this process holds before the server starts.

Without PREFECT_API_URL, a Prefect client starts a temporary server of its own: it picks a free port, then
starts uvicorn on it, and trusts whatever answers `/api/health`. Another user on the host who binds that
port in between answers the run's clients instead, and the first request hands over the run's password
(flows/runtime.py). Here the port is bound, and listening, in this process first, and uvicorn serves that
very socket (`--fd`): there is no moment in which the port is free for someone else to take.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

START_TIMEOUT_S = 120.0  # ~15 s on 2 busy cores
STOP_TIMEOUT_S = 10.0


class PrefectServerError(RuntimeError):
    """The run's Prefect server did not start."""


@contextlib.contextmanager
def run_server(timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """Prefect's API server on 127.0.0.1 for the block; yields its API URL, which this process and its
    children (PREFECT_API_URL) use meanwhile. The server takes its settings (PREFECT_HOME, the run's
    password) from this process's environment."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    held.listen(128)  # from here on, connections queue for the server: nobody else can take the port
    url = f"http://127.0.0.1:{held.getsockname()[1]}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
    command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
               "--fd", str(held.fileno()), "--log-level", "error", "--lifespan", "on"]  # fmt: skip
    with held:
        server = subprocess.Popen(command, env=env, pass_fds=[held.fileno()], stdin=subprocess.DEVNULL)
    try:
        _wait_until_healthy(server, url, timeout_s)
        before = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        try:
            with temporary_settings({PREFECT_API_URL: url}):
                yield url
        finally:
            if before is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = before
    finally:
        server.terminate()
        try:
            server.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_healthy(server: subprocess.Popen, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise PrefectServerError(f"the run's Prefect server exited with code {server.returncode}")
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        time.sleep(0.2)
    raise PrefectServerError(f"the run's Prefect server at {url} did not answer within {timeout_s:.0f} s")


def run_server_unless_configured() -> contextlib.AbstractContextManager:
    """`run_server` unless PREFECT_API_URL names a server (yours, with its own auth), which runs go to."""
    return contextlib.nullcontext() if os.environ.get("PREFECT_API_URL") else run_server()
