"""Prefect's temporary server listens on 127.0.0.1 for as long as a run: its API would take flow runs, with
any parameters, from anyone on the host. `flows.runtime.prepare` gives it a password made for the run,
which only the run's own clients know."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from other_user import require_other_user
from projects import TINY, cli_env, init_project, write_params

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


# `ldmflow run ingest`, with the other user trying to take the port of the run's Prefect server at the
# moment the server process is spawned: the best moment there is, before the server binds it.
RUN_UNDER_ATTACK = """
import json, os, socket, subprocess, sys
sys.path.insert(0, sys.argv[1])
from other_user import grab_port

real_popen, grabbers = subprocess.Popen, []


class SpawnWatched(real_popen):
    def __init__(self, args, *more, **kwargs):
        if isinstance(args, list) and "uvicorn" in args and not grabbers:
            if "--port" in args:
                port = int(args[args.index("--port") + 1])
            else:  # a socket handed over already bound: its port
                with socket.socket(fileno=os.dup(int(args[args.index("--fd") + 1]))) as held:
                    port = held.getsockname()[1]
            grabbers.append(grab_port(port))
        super().__init__(args, *more, **kwargs)


subprocess.Popen = SpawnWatched
from flows.cli import main

try:
    code = main(["run", "ingest"])
except BaseException as err:
    code = repr(err)
grabber = grabbers[0]
grabber.kill()
requests = [line for line in grabber.stdout.read().splitlines() if line.startswith("request")]
print(json.dumps({"code": code, "grab": grabber.first_line, "requests": requests}))
"""


@pytest.mark.faults
def test_another_user_cannot_take_the_port_of_a_runs_prefect_server(tmp_path, s3_server, fault):
    require_other_user(needs_python=True)
    root = tmp_path / "project"
    root.mkdir()
    write_params(root, TINY, s3_server, f"prefect-port-{os.getpid()}")
    env = {k: v for k, v in cli_env(s3_server).items() if not k.startswith("PREFECT_")}
    init_project(root, env)
    done = subprocess.run([sys.executable, "-c", RUN_UNDER_ATTACK, str(Path(__file__).parent)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["grab"] == "refused" and outcome["requests"] == [], (outcome, done.stderr[-3000:])
    assert outcome["code"] == 0, done.stderr[-3000:]
    fault("local attacker: another uid binds the run's Prefect port as the server is spawned",
          "refused: the run holds the socket before the server starts; its password never sent")  # fmt: skip
