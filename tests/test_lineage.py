"""Where a registered version says it came from (tasks/evaluate/lineage.py), on a project whose stage outputs
are a few files: from dvc.lock when the lock describes the run, from the run itself when it does not. The
registered versions are checked in tests/test_pipeline_e2e.py."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from projects import BIN, TINY, init_project

from tasks.common.config import config_from_dict, load_config
from tasks.evaluate.lineage import FROM_LOCK, FROM_RUN, lineage, lineage_report, overrides_between
from tasks.graph import ORDER, STAGES

INPUTS = ["data/ingested", "artifacts/vae", "artifacts/text", "artifacts/unet"]  # what evaluate reads
DVC_ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def dvc_commit(root, *stages: str) -> None:
    """Record the stages' deps and outs in dvc.lock as they are now (what a run of params.yaml does)."""
    subprocess.run([str(BIN / "dvc"), "commit", "-f", "-q", *stages], cwd=root, env=DVC_ENV, check=True)


@pytest.fixture
def recorded(tmp_path):
    """A project whose upstream outputs are recorded in dvc.lock (`dvc commit`, as a run of params.yaml)."""
    init_project(tmp_path, DVC_ENV)
    params = config_from_dict(TINY).model_dump(mode="json")  # every section a stage lists in dvc.yaml
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "data").mkdir()
    (tmp_path / "data/source_listing.json").write_text("{}\n")
    upstream = [name for name in ORDER if name != "evaluate"]
    for out in (out for name in upstream for out in STAGES[name].outs):
        (tmp_path / out).mkdir(parents=True)
        (tmp_path / out / "manifest.parquet").write_text(f"{out} as recorded\n")
    dvc_commit(tmp_path, *upstream)
    return tmp_path


def test_a_run_of_params_yaml_has_the_lineage_dvc_lock_records(recorded):
    found = lineage(load_config(recorded / "params.yaml"), recorded, recorded / "data/ingested")
    lock = yaml.safe_load((recorded / "dvc.lock").read_text())["stages"]
    assert found.from_lock and found.tags["lineage.source"] == FROM_LOCK
    assert found.tags["lineage.dvc_lock.artifacts/unet"] == lock["train_unet"]["outs"][0]["md5"]
    from_lock = {k.removeprefix("lineage.dvc_lock.") for k in found.tags if k.startswith("lineage.dvc_lock.")}
    assert from_lock == set(INPUTS)
    assert not [k for k in found.tags if k.startswith(("lineage.run.", "lineage.overrides"))]


def test_an_override_run_has_lineage_of_its_own(recorded):
    lock = (recorded / "dvc.lock").read_text()
    (recorded / "artifacts/unet/manifest.parquet").write_text("a U-Net of 3 steps\n")  # what the run wrote
    cfg = load_config(recorded / "params.yaml", ["unet.steps=3", "eval.views.enabled=false"])
    found = lineage(cfg, recorded, recorded / "data/ingested")
    tags = found.tags
    assert not found.from_lock and tags["lineage.source"] == FROM_RUN
    assert not [k for k in tags if k.startswith("lineage.dvc_lock.")]
    assert json.loads(tags["lineage.overrides"]) == ["unet.steps=3", "eval.views.enabled=false"]
    assert "params differ from params.yaml (2 override(s))" in tags["lineage.why"]
    assert "artifacts/unet differs from dvc.lock" in tags["lineage.why"]
    assert "data/ingested" not in tags["lineage.why"]
    # the md5s DVC gives the files now, as `dvc commit` would record them; the lock itself is left alone
    assert (recorded / "dvc.lock").read_text() == lock
    dvc_commit(recorded, "train_unet")
    now = yaml.safe_load((recorded / "dvc.lock").read_text())["stages"]["train_unet"]["outs"][0]["md5"]
    assert tags["lineage.run.artifacts/unet"] == now
    assert {k.removeprefix("lineage.run.") for k in tags if k.startswith("lineage.run.")} == set(INPUTS)

    shown = lineage_report("ldmflow", "7", [], "abc", tags)
    assert "dvc.lock does not describe it" in shown and "dvc checkout" not in shown
    assert "ldmflow run --set unet.steps=3 --set eval.views.enabled=false" in shown
    assert f"artifacts/unet  md5 {now}" in shown and "ldmflow lineage models:/ldmflow/7 --run-params" in shown


def test_overrides_read_back_into_the_same_params(tmp_path):
    """The overrides a version records turn params.yaml into its params again through `--set`."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    base = load_config(tmp_path / "params.yaml")
    given = ["orchestration.schedule_cron=* * * * *", "unet.lr=1e-05", "data.synthetic.colors=[red, 'a: b']"]
    cfg = load_config(tmp_path / "params.yaml", given)
    found = overrides_between(base.model_dump(mode="json"), cfg.model_dump(mode="json"))
    assert len(found) == 3
    assert load_config(tmp_path / "params.yaml", found) == cfg
    assert overrides_between(base.model_dump(mode="json"), base.model_dump(mode="json")) == []
