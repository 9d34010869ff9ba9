"""A team's registry: `mlflow server` over HTTP (its store in SQLite, no artifact proxy), the model files in
the team's S3 (the session's S3 server, named as a configured endpoint). The evaluate stage's `register`
puts the version on the server and its files in `s3://<bucket>/mlflow`, and a teammate's `ldmflow generate`
draws from it with nothing but the project's params and the S3 credentials."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from projects import BIN, cli_env

from infra import tracking
from infra.tracking import CHAMPION
from tasks.common.config import load_config
from tasks.common.paths import ProjectPaths
from tasks.evaluate.registration import register

START_TIMEOUT_S = 120


@pytest.fixture
def tracking_server(tmp_path, s3_server, object_store) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 for the test: SQLite in tmp_path, and a default artifact root in the
    test's bucket that it never serves (`--no-serve-artifacts`: clients go to the S3 themselves)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--no-serve-artifacts",
               "--default-artifact-root", f"s3://{object_store.bucket}/server-default"]  # fmt: skip
    log = (tmp_path / "mlflow-server.log").open("wb")
    server = subprocess.Popen(command, env=cli_env(s3_server), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            assert server.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its workers too
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def test_a_model_registered_on_a_tracking_server_sits_in_the_teams_s3_and_generates(
    tiny_pipe, tmp_path, tracking_server, s3_server, object_store, monkeypatch
):
    # a configured S3's keys come from the default chain, the environment here; and MLflow's S3 client
    # finds the endpoint here (connect sets it for its process). All restored afterwards.
    for key, value in {**s3_server.client_environment(), "MLFLOW_S3_ENDPOINT_URL": ""}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")
    root = tmp_path / "project"
    root.mkdir()
    storage = {"endpoint_url": s3_server.endpoint_url, "bucket": object_store.bucket, "prefix": "cache"}
    params = {"seed": 0, "storage": storage, "tracking": {"uri": tracking_server}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(root / "params.yaml")
    with tracking.run(cfg, ProjectPaths.at(root), "evaluate") as tracker:
        version = register(cfg, tiny_pipe, tracker, CHAMPION, {})

    server = MlflowClient(tracking_server)
    name = cfg.tracking.registered_model
    assert server.get_model_version_by_alias(name, CHAMPION).version == version
    experiment = server.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment.artifact_location == f"s3://{object_store.bucket}/mlflow"
    listed = object_store.client.list_objects_v2(Bucket=object_store.bucket, Prefix="mlflow/")
    stored = [item["Key"] for item in listed.get("Contents", [])]
    assert any(key.endswith(".safetensors") for key in stored), stored
    assert not (root / ".ldmflow" / "mlartifacts").exists()  # nothing kept on this machine

    # a teammate: the same params, the S3 credentials (and CA) in the environment, nothing else
    teammate = tmp_path / "teammate"
    teammate.mkdir()
    (teammate / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in cli_env(s3_server).items() if k != "MLFLOW_S3_ENDPOINT_URL"}
    drawn = subprocess.run([BIN / "ldmflow", "generate", "a red circle", "-n", "1", "--steps", "2",
                            "--model", f"models:/{name}/{version}", "--out", "drawn.png"],
                           cwd=teammate, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    with Image.open(teammate / "drawn.png") as image:
        assert image.format == "PNG"
    assert not Path(teammate / ".ldmflow" / "mlflow.db").exists()  # the server's registry, not a local one
