"""`ldmflow stage NAME` (what every dvc.yaml command runs) on the embedded default: a stage that uses
object storage starts the project's S3 server when none runs and stops it again when it ends (one that
was already running is left running: tests/test_storage.py)."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from projects import BIN, TINY

from infra.s3 import embedded
from tasks.common.config import config_from_dict
from tasks.common.paths import ProjectPaths
from tasks.ingest.stage import run_ingest

pytestmark = pytest.mark.e2e


def stage(root, name: str) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([str(BIN / "ldmflow"), "stage", name], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, f"ldmflow stage {name}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_a_stage_stops_the_s3_server_it_started(tmp_path):
    port = embedded.find_free_s3_port()
    params = {**TINY, "storage": {"embedded_port": port}}  # the embedded default, on a port of its own
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    paths = ProjectPaths.at(tmp_path)
    run_ingest(config_from_dict(params), paths.ingested)  # what embed_text reads
    try:
        stage(tmp_path, "embed_text")
        assert (tmp_path / "artifacts/text/cache.json").is_file()
        assert embedded.status(paths.s3_state) is None, "the stage left the S3 server it started running"
        assert not embedded.busy_ports(port)
    finally:
        embedded.stop(paths.s3_state)
