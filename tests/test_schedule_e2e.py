"""Scheduled runs against a real `prefect server start` on 127.0.0.1 (started and stopped here), served
by `ldmflow serve`, triggered through the server's REST API as the scheduler would, in a project set up
for nightly runs (`vae.init` and `unet.init: champion`): a first run; 10 new images in the user's folder;
a second run that decodes and encodes only them (it keeps the first run's VAE, so every cached latent
keeps its key), continues from the first run's U-Net and registers a second version under the gate; and
a third run, started while the second holds the project, that fails at once and notifies the webhook."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from projects import BIN, TINY, cli_env, init_project, write_params
from user_data import write_photo_folder

from flows.run_lock import lock_path
from tasks.common.paths import ProjectPaths

pytestmark = pytest.mark.e2e
DEPLOYMENT = "ldmflow-pipeline/nightly"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, body: dict | None = None, attempts: int = 8) -> dict:
    """One REST call. A 503 is the server's "retry me" (its SQLite was busy and the transaction rolled
    back), so it is retried with backoff, as Prefect's own client does."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(attempts):
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == attempts - 1:
                raise
        time.sleep(min(2**attempt, 15))
    raise AssertionError("unreachable")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def _running(command: list, env: dict, log: Path, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """`command` in a session of its own (its workers stop with it) for the block, its output in `log`."""
    with open(log, "w") as out:
        proc = subprocess.Popen([str(part) for part in command], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            yield proc
        finally:
            _stop(proc)


@contextlib.contextmanager
def _served(project: Path, env: dict, prefect_api: str, log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`ldmflow serve` in `project` for the block, once its deployment is on the server: (the process, the
    deployment's id)."""
    with _running([BIN / "ldmflow", "serve"], env, log, cwd=project) as serve:
        deployment = _wait_for(lambda: _api(f"{prefect_api}/deployments/name/{DEPLOYMENT}")["id"], 120,
                               "the served deployment", serve)  # fmt: skip
        yield serve, deployment


def _wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({proc.returncode})")
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def prefect_api(tmp_path):
    """A real Prefect server on 127.0.0.1, its own home and database; stopped at the end."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-server"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    url = f"http://127.0.0.1:{port}/api"
    command = [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _running(command, env, tmp_path / "prefect-server.log") as server:
        _wait_for(lambda: urllib.request.urlopen(f"{url}/health", timeout=5).status == 200, 180,
                  "prefect server start", server)  # fmt: skip
        yield url


@pytest.fixture
def webhook():
    """A webhook on 127.0.0.1 that keeps what is POSTed to it."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_served_deployment_runs_to_completion_on_new_data_and_refuses_overlap(
    tmp_path, s3_server, prefect_api, webhook
):
    hook_url, notices = webhook
    photos = tmp_path / "photos"
    write_photo_folder(photos, n=60)
    params = {**TINY, "data": {"source": "imagefolder", "path": str(photos), "resolution": 16,
                               "shard_size": 32, "val_fraction": 0.25},
              "vae": {**TINY["vae"], "init": "champion"}, "unet": {**TINY["unet"], "init": "champion"},
              "orchestration": {"schedule_cron": "0 3 1 1 *", "notify_url": hook_url}}  # fmt: skip
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, params, s3_server, f"sched-{os.getpid()}")
    env = cli_env(s3_server, PREFECT_HOME=str(project / ".prefect"), PREFECT_API_URL=prefect_api)
    init_project(project, env)

    with _served(project, env, prefect_api, tmp_path / "serve.log") as (serve, deployment):
        assert _api(f"{prefect_api}/deployments/{deployment}")["schedules"]  # the cron from params

        def trigger(**parameters) -> str:
            body = {"parameters": parameters}
            return _api(f"{prefect_api}/deployments/{deployment}/create_flow_run", body)["id"]

        def state(run: str) -> dict:
            return _api(f"{prefect_api}/flow_runs/{run}")["state"]

        def finished(run: str, timeout: float = 600) -> dict:
            return _wait_for(lambda: (s := state(run))["type"] in FINAL and s, timeout, f"run {run}", serve)

        first = finished(trigger())
        assert first["type"] == "COMPLETED", first["message"]
        manifest = project / "data/ingested/manifest.parquet"
        assert len(pd.read_parquet(manifest)) == 60

        write_photo_folder(photos, n=70)  # the same 60 images, and 10 new ones
        second = trigger()
        holder = lock_path(ProjectPaths.at(project))
        _wait_for(lambda: state(second)["type"] == "RUNNING" and holder.read_text(), 120, "the second run")
        third_run = trigger()
        third = finished(third_run, timeout=180)
        assert third["type"] == "FAILED" and "is busy" in third["message"], third
        assert "on_overlap is 'fail'" in third["message"]
        assert state(second)["type"] == "RUNNING"  # the third run failed fast, while the second ran on
        done = finished(second)
        assert done["type"] == "COMPLETED", done["message"]
        report = json.loads((project / "data/ingested/report.json").read_text())
        assert (report["decoded"], report["reused"], len(pd.read_parquet(manifest))) == (10, 60, 70)
        latents = json.loads((project / "artifacts/latents/cache.json").read_text())
        assert (latents["items_computed"], latents["items_reused"]) == (10, 60)
        text = json.loads((project / "artifacts/text/cache.json").read_text())
        new_captions = pd.read_parquet(manifest)["caption"].iloc[60:]
        assert text["items_computed"] <= new_captions.nunique()  # captions seen before are not encoded again

        uri = f"sqlite:///{project / 'mlflow.db'}"
        client = MlflowClient(uri, registry_uri=uri)
        versions = sorted(client.search_model_versions("name='ldmflow'"), key=lambda v: int(v.version))
        assert len(versions) == 2  # the failed third run registered nothing
        newest = versions[1]
        experiment = client.get_experiment_by_name("ldmflow").experiment_id
        runs = client.search_runs([experiment])
        unet_inits = {r.data.tags.get("ldmflow.unet_init") for r in runs} - {None}
        assert unet_inits == {"scratch (no champion yet)", "champion version 1"}  # the second: the first's
        vae_inits = {r.data.tags.get("ldmflow.vae_init") for r in runs} - {None}
        assert vae_inits == {"scratch (no champion yet)", "champion version 1, kept as it is"}
        verdict = client.get_run(newest.run_id).data.tags["ldmflow.gate"]
        champion = client.get_model_version_by_alias("ldmflow", "champion").version
        if verdict.startswith("champion"):
            assert champion == newest.version
        else:
            assert verdict.startswith("challenger") and champion == versions[0].version
            assert client.get_model_version_by_alias("ldmflow", "challenger").version == newest.version

        assert len(notices) == 1  # the webhook heard of the failure, with the error and the run's link
        assert notices[0]["flow_run_id"] == third_run and "is busy" in notices[0]["error"]
        assert notices[0]["links"]["prefect"].endswith(third_run)


@pytest.mark.faults
def test_a_served_deployment_runs_only_the_project_and_params_it_was_served_with(
    tmp_path, s3_server, prefect_api, fault
):
    """Anyone who can reach the Prefect API can start a run of the served deployment. A run given another
    root, params file or overrides (the server's schema check turned off, as the API lets a run's starter
    do) crashes before the flow body runs, as Prefect does with parameters its flow does not take: nothing
    is read or written for it. A run that chooses only its stages runs, in the project it was served from."""
    private = tmp_path / "private"  # the serving user's own photos
    write_photo_folder(private, n=12)
    theirs = tmp_path / "theirs"  # photos of someone else's choosing
    write_photo_folder(theirs, n=5)
    params = {**TINY, "data": {"source": "imagefolder", "path": str(private), "resolution": 16,
                               "shard_size": 32, "val_fraction": 0.25},
              "orchestration": {"schedule_cron": "0 3 1 1 *"}}  # fmt: skip
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    env = cli_env(s3_server, PREFECT_HOME=str(project / ".prefect"), PREFECT_API_URL=prefect_api)
    for root, bucket in ((project, "served"), (elsewhere, "elsewhere")):
        root.mkdir()
        write_params(root, params, s3_server, f"{bucket}-{os.getpid()}")
        init_project(root, env)
    # another user's project on the host: its params read the serving user's photos into a folder of theirs
    their_params = elsewhere / "params.yaml"

    with _served(project, env, prefect_api, tmp_path / "serve.log") as (serve, deployment):

        def run(**parameters) -> dict:
            body = {"parameters": {"stages": ["ingest"], **parameters}, "enforce_parameter_schema": False}
            made = _api(f"{prefect_api}/deployments/{deployment}/create_flow_run", body)["id"]
            return _wait_for(lambda: (s := _api(f"{prefect_api}/flow_runs/{made}")["state"])["type"] in FINAL
                             and s, 300, f"run {made}", serve)  # fmt: skip

        ingested = [root / "data/ingested" for root in (project, elsewhere)]
        served_log = tmp_path / "serve.log"
        attempts = {"root": str(elsewhere), "params_file": str(their_params),
                    "overrides": [f"data.path={theirs}"]}  # fmt: skip
        for name, value in attempts.items():
            state = run(**{name: value})
            assert state["type"] == "CRASHED", (name, state)
            said = f"but was provided with parameters ['stages', '{name}']"  # SignatureMismatchError
            _wait_for(lambda said=said: said in served_log.read_text(), 30, f"the refusal of {name}")
            assert not any(folder.exists() for folder in ingested), name  # nothing read, nothing written
        state = run()  # the stages are the run's to choose
        assert state["type"] == "COMPLETED", state["message"]
        assert len(pd.read_parquet(project / "data/ingested/manifest.parquet")) == 12
        assert not (elsewhere / "data/ingested").exists()
    fault("local attacker: runs of the served deployment with another root, params_file or overrides",
          f"all {len(attempts)} CRASHED before the flow body (a parameter not in its signature), nothing "
          "ingested anywhere; a run choosing only stages ingested the served project's 12")  # fmt: skip
