"""`ldmflow run` of one stage on a fresh project: the DVC push that ends a recorded run needs the project's
bucket, which only the stages that use object storage used to create, so `ldmflow run ingest` failed
after its work ("The specified bucket does not exist")."""

from __future__ import annotations

import os

import pytest
from projects import TINY, cli_env, init_project, write_params
from test_pipeline_e2e import ldmflow, stage_outcomes

pytestmark = pytest.mark.e2e


def test_ingest_alone_on_a_fresh_project_ends_with_its_push(tmp_path, s3_server, prefect_api_url):
    root = tmp_path / "project"
    root.mkdir()
    write_params(root, TINY, s3_server, f"one-stage-{os.getpid()}")  # a bucket nothing has made yet
    env = cli_env(s3_server, PREFECT_HOME=str(root / ".prefect"), PREFECT_API_URL=prefect_api_url)
    init_project(root, env)
    run = ldmflow(root, env, "run", "ingest")
    assert stage_outcomes(run.stdout) == {"ingest": "ran"}
    assert "dvc push: " in run.stdout + run.stderr
