"""The servers a run talks to, started alone on one core: stand-ins for servers on other machines.

`ldmflow run` on the embedded default starts its own S3 server and Prefect's temporary server, and both
share every core with the stages. A benchmark whose figure depends on that sharing measures it again
with `servers_on_core`: the project's S3 server (`ldmflow s3 start`, kept up between runs as a real
endpoint is) and a `prefect server start` (what scheduled runs talk to) run on one core, and the runs
(`run_cores`) on the others.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def on_cores(cores: set[int]) -> Callable[[], None]:
    """A `preexec_fn` that puts the child (and every process it starts) on `cores`."""
    return lambda: os.sched_setaffinity(0, cores)


def run_cores(server_core: int) -> set[int]:
    """The cores left to the runs."""
    mine = os.sched_getaffinity(0)
    if server_core not in mine or len(mine) < 2:
        raise SystemExit(
            f"--server-core {server_core}: not one of two or more cores this process has ({mine})"
        )
    return mine - {server_core}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def servers_on_core(project: Path, core: int, home: Path) -> Iterator[dict[str, str]]:
    """The project's S3 server and a Prefect server (its home under `home`) on `core`, both on 127.0.0.1;
    yields the environment a run needs to use them. Both are stopped at the end."""
    pinned = on_cores({core})
    subprocess.run([str(BIN / "ldmflow"), "s3", "start"], cwd=project, check=True, capture_output=True,
                   preexec_fn=pinned)  # fmt: skip
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pinned,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"prefect server start failed; see {home / 'server.log'}")
            time.sleep(1)
        yield {**os.environ, "PREFECT_API_URL": url}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        subprocess.run([str(BIN / "ldmflow"), "s3", "stop"], cwd=project, capture_output=True)
