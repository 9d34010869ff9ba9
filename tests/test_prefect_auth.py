"""Prefect's temporary server listens on 127.0.0.1 for as long as a run: its API would take flow runs, with
any parameters, from anyone on the host. `flows.runtime.prepare` gives it a password made for the run,
which only the run's own clients know."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sys, urllib.error, urllib.request
from pathlib import Path
from flows.runtime import prepare
from tasks.common.paths import ProjectPaths

prepare(ProjectPaths.at(Path(sys.argv[1])))
from prefect import flow
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, temporary_settings

server = SubprocessASGIServer()
server.start(timeout=120)
try:
    request = urllib.request.Request(server.api_url + "/flow_runs/filter", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    try:
        stranger = urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as err:
        stranger = err.code
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        own = flow(lambda: 3, name="probe")()
finally:
    server.stop()
print(json.dumps({"stranger": stranger, "own": own}))
"""


@pytest.mark.faults
def test_the_temporary_prefect_server_refuses_clients_without_the_runs_password(tmp_path, fault):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers == {"stranger": 401, "own": 3}
    fault("a request to the temporary Prefect server's API", "refused: HTTP 401 without the run's password")
