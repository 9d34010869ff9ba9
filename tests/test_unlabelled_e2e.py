"""A user's own unlabelled image folder, through the real CLI: it is evaluated by the judge alone, its model
becomes champion, and `ldmflow generate` samples that champion."""

from __future__ import annotations

import json
import os

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from projects import TINY, cli_env, init_project, write_params
from test_pipeline_e2e import ldmflow
from user_data import write_photo_folder

pytestmark = pytest.mark.e2e


def test_an_unlabelled_folder_gets_a_champion_that_generate_samples(tmp_path, s3_server):
    write_photo_folder(tmp_path / "photos", n=80)
    params = {**TINY, "data": {"source": "imagefolder", "path": str(tmp_path / "photos"), "resolution": 16,
                               "shard_size": 32, "val_fraction": 0.25}}  # fmt: skip
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, params, s3_server, f"photos-{os.getpid()}")
    env = cli_env(s3_server, PREFECT_HOME=str(project / ".prefect"))
    init_project(project, env)

    run = ldmflow(project, env, "run")
    metrics = json.loads((project / "artifacts/eval/metrics.json").read_text())
    assert "prompt_adherence" not in metrics  # no labels to read off
    assert 0.0 <= metrics["r_precision_judge"] <= 1.0
    assert metrics["r_precision_chance"] == pytest.approx(1 / metrics["r_precision_pool"])
    assert metrics["fd_judge"] >= 0.0 and metrics["fd_judge_floor"] >= 0.0
    assert "champion: first model to clear the floor" in run.stdout + run.stderr

    uri = f"sqlite:///{project / 'mlflow.db'}"
    champion = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("ldmflow", "champion")
    assert float(champion.tags["metric.r_precision_judge"]) == pytest.approx(metrics["r_precision_judge"])
    lineage = {k: v for k, v in champion.tags.items() if k.startswith("lineage.")}
    assert len(lineage["lineage.manifest_sha256"]) == 64 and lineage["lineage.params_hash"]
    assert {"lineage.dvc_lock.data/ingested", "lineage.dvc_lock.artifacts/unet"} <= set(lineage)

    ldmflow(project, env, "generate", "two golden spots against a dark backdrop", "-n", "2", "--out", "g.png")
    with Image.open(project / "g.png") as img:
        assert img.size[0] >= 2 * 16
