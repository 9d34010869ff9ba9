"""A user's own unlabelled image folder, through the real CLI: it is evaluated by the judge alone, its model
becomes champion, `ldmflow generate` samples that champion, and `ldmflow lineage` says where it came from.
The run pushes its outputs to the DVC remote on the project's S3; a teammate's fresh clone pulls them, and
its `ldmflow run` finds every stage up to date."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from projects import TINY, cli_env, init_project, write_params
from test_pipeline_e2e import dvc, ldmflow, stage_outcomes
from user_data import write_photo_folder

pytestmark = pytest.mark.e2e


def git(project, *args: str) -> str:
    identity = ["-c", "user.name=ldmflow-test", "-c", "user.email=test@localhost"]
    done = subprocess.run(["git", *identity, *args], cwd=project, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_an_unlabelled_folder_gets_a_champion_that_generate_samples(tmp_path, s3_server, prefect_api_url):
    write_photo_folder(tmp_path / "photos", n=80)
    params = {**TINY, "data": {"source": "imagefolder", "path": str(tmp_path / "photos"), "resolution": 16,
                               "shard_size": 32, "val_fraction": 0.25}}  # fmt: skip
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, params, s3_server, f"photos-{os.getpid()}")
    env = cli_env(s3_server, PREFECT_HOME=str(project / ".prefect"), PREFECT_API_URL=prefect_api_url)
    init_project(project, env)
    (project / ".gitignore").write_text(".ldmflow/\n.prefect/\nmlflow.db\nmlruns/\n")  # local run state
    git(project, "add", "-A")
    git(project, "commit", "-qm", "the project")
    commit = git(project, "rev-parse", "HEAD")

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

    shown = ldmflow(project, env, "lineage").stdout  # the champion's
    assert f"version {champion.version} (champion)" in shown and f"git commit {commit}" in shown
    assert lineage["lineage.manifest_sha256"] in shown and "dvc checkout" in shown
    recorded = yaml.safe_load(ldmflow(project, env, "lineage", "--dvc-lock").stdout)  # the run's own lock
    assert recorded["stages"]["ingest"]["outs"][0]["md5"] == lineage["lineage.dvc_lock.data/ingested"]

    ldmflow(project, env, "generate", "two golden spots against a dark backdrop", "-n", "2", "--out", "g.png")
    with Image.open(project / "g.png") as img:
        assert img.size[0] >= 2 * 16

    # a teammate: a fresh clone of the committed project, `dvc pull` from the S3 the run pushed to
    assert "dvc push: " in run.stdout + run.stderr
    git(project, "add", "-A")  # dvc.lock, and .dvc/config naming the remote (no credentials in it)
    git(project, "commit", "-qm", "the run's outputs")
    assert "secret" not in (project / ".dvc/config").read_text()
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    teammate = {**env, "PREFECT_HOME": str(clone / ".prefect")}
    dvc(clone, teammate, "pull")
    again = ldmflow(clone, teammate, "run")
    assert set(stage_outcomes(again.stdout).values()) == {"up to date"}, again.stdout
    shown = ldmflow(clone, teammate, "lineage").stdout
    assert f"git commit {commit}" in shown and lineage["lineage.manifest_sha256"] in shown

    # ...who tries a longer U-Net as a DVC experiment: only train_unet and evaluate run again
    tried = dvc(clone, teammate, "exp", "run", "-S", "unet.steps=6")
    assert "Running stage 'train_unet'" in tried and "Running stage 'ingest'" not in tried
    table = json.loads(dvc(clone, teammate, "exp", "show", "--json"))
    tries = [r["data"] for base in table for group in base.get("experiments") or [] for r in group["revs"]]
    assert [t["params"]["params.yaml"]["data"]["unet"]["steps"] for t in tries] == [6]
    assert "r_precision_judge" in tries[0]["metrics"]["artifacts/eval/metrics.json"]["data"]
    assert "curves/val_loss.csv" in dvc(clone, teammate, "plots", "show", "--json")
