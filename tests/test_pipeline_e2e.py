"""The whole pipeline on a tiny config, through the real CLI: Prefect's temporary server, the test S3
server, MLflow on SQLite, DVC recording the lock. One project directory is shared by the steps below
(module scope), because each step checks what the previous one left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from projects import BIN, TINY, cli_env, init_project, write_params

pytestmark = pytest.mark.e2e
STAGES = ["ingest", "train_vae", "cache_latents", "embed_text", "train_unet", "evaluate"]


def ldmflow(project: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN / "ldmflow"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ldmflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def stage_outcomes(stdout: str) -> dict[str, str]:
    """The summary `ldmflow run` prints: one `  <stage>  ran|up to date` line per stage."""
    found = (re.match(r"^  (\w+)\s+(ran|up to date)$", line) for line in stdout.splitlines())
    return {m[1]: m[2] for m in found if m}


def dvc(project: Path, env: dict, *args: str) -> str:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3_server, prefect_api_url):
    root = tmp_path_factory.mktemp("project")
    bucket = f"e2e-{os.getpid()}"
    write_params(root, TINY, s3_server, bucket)
    env = cli_env(s3_server, PREFECT_HOME=str(root / ".prefect"), PREFECT_API_URL=prefect_api_url)
    init_project(root, env)
    return root, env, bucket


@pytest.mark.faults
def test_full_run_registers_a_model(project, s3_server, fault):
    root, env, bucket = project
    run = ldmflow(root, env, "run")
    outcomes = stage_outcomes(run.stdout)
    assert outcomes == dict.fromkeys(STAGES, "ran")
    # the S3 secret is nowhere: not in the logs, the Prefect and MLflow DBs, MLflow's artifacts, dvc.lock
    secret = s3_server.secret_key.encode()
    assert secret not in (run.stdout + run.stderr).encode()
    prefect_home = Path(os.environ["PREFECT_HOME"])  # the Prefect server's DB (tests/conftest.py)
    written = [p for folder in (root, prefect_home) for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in written)
    holding = [p for p in written if secret in p.read_bytes()]
    assert holding == [], f"the S3 secret was written to {holding}"
    fault(
        "the S3 secret after a full run", f"in none of {len(written)} files (DBs, artifacts, dvc.lock, logs)"
    )

    report = json.loads((root / "data/ingested/report.json").read_text())
    assert report["total"] == report["accepted"] + report["rejected"] == 96

    metrics = json.loads((root / "artifacts/eval/metrics.json").read_text())
    assert 0.0 <= metrics["prompt_adherence"] <= 1.0
    assert metrics["chance_level"] == pytest.approx(0.25)
    assert all(isinstance(v, int | float) for v in metrics.values())
    judged = ["r_precision_judge", "r_precision_judge_ceiling", "r_precision_judge_shuffled", "fd_judge",
              "fd_judge_floor", "kid_judge", "precision_judge", "recall_judge"]  # fmt: skip
    assert set(judged) <= set(metrics)
    assert metrics["r_precision_chance"] == pytest.approx(1 / metrics["r_precision_pool"])

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)  # explicit: other tests in this process set MLflow's globals
    version = client.get_model_version_by_alias("ldmflow", "champion")
    assert int(version.version) >= 1
    runs = client.search_runs([client.get_experiment_by_name("ldmflow").experiment_id])
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    children = {
        r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    assert len(parents) == 1
    assert children == set(STAGES)
    unet_run = next(r for r in runs if r.info.run_name == "train_unet")
    assert "val_loss" in unet_run.data.metrics and "samples_per_second" in unet_run.data.metrics
    grids = [a.path for a in client.list_artifacts(unet_run.info.run_id, "validation")]
    assert grids == ["validation/step-0000004.png"]  # at the end of the 4 steps

    # the evaluated model's report: its metrics and views, in artifacts/eval/, its MLflow run and Prefect
    report_md = (root / "artifacts/eval/report.md").read_text()
    shown = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report_md)
    assert shown == ["latents.png", "walk_seeds.png", "walk_prompts.png", "walk_sheet.png", "attention.png"]
    assert "| prompts, even | 2 |" in report_md and "| prompts, refined | 4 |" in report_md  # 2 frames added
    for image in shown:
        with Image.open(root / "artifacts/eval" / image) as picture:
            assert picture.format == "PNG" and min(picture.size) >= 16, image
    eval_run = next(r for r in runs if r.info.run_name == "evaluate")
    logged = {a.path for a in client.list_artifacts(eval_run.info.run_id)}
    assert {"report.md", *shown} <= logged
    assert {"view_seconds_latents", "view_seconds_interpolation", "view_seconds_attention"} <= set(
        eval_run.data.metrics
    )
    from prefect.artifacts import Artifact

    assert "## Cross-attention" in Artifact.get("evaluation-report").data  # the session's Prefect server

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name=s3_server.region,
    )
    for prefix in ("cache/latents/", "cache/text/"):
        assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["KeyCount"] > 0


def test_nothing_changed_means_nothing_runs(project):
    root, env, _ = project
    assert "Data and pipelines are up to date" in dvc(root, env, "status")
    assert stage_outcomes(ldmflow(root, env, "run").stdout) == dict.fromkeys(STAGES, "up to date")
    assert "Data and pipelines are up to date" in dvc(root, env, "repro")
    dag = dvc(root, env, "dag")
    for stage in STAGES:
        assert stage in dag
    sweep = json.loads(dvc(root, env, "plots", "show", "--json"))
    assert "errors" not in sweep and "artifacts/eval/guidance_sweep.json" in sweep["data"]
    assert '"guidance_scale": 7.0' in json.dumps(sweep)  # the scales are the plot's x


def test_editing_the_sampler_makes_the_stages_that_sample_stale(project):
    root, env, _ = project
    sampler = root / "models" / "sampler" / "sampling.py"
    original = sampler.read_text()
    try:
        sampler.write_text(original + "\n# an edit\n")
        stale = set(re.findall(r"^(\w+):$", dvc(root, env, "status"), re.MULTILINE))
    finally:
        sampler.write_text(original)
    assert stale == {"train_unet", "evaluate"}  # train_unet samples its validation grid
    assert "Data and pipelines are up to date" in dvc(root, env, "status")


def test_editing_infrastructure_leaves_every_stage_up_to_date(project):
    """infra/ (the S3 server and its TLS, the S3 client, MLflow tracking, processes) decides no output: an
    edit of any of its files re-runs nothing. An edit of what the stages share (tasks/common) re-runs all."""
    root, env, _ = project
    edited = sorted((root / "infra").rglob("*.py"))
    assert root / "infra" / "s3" / "tls.py" in edited
    shared = root / "tasks" / "common" / "paths.py"
    originals = {path: path.read_text() for path in [*edited, shared]}
    try:
        for path in edited:
            path.write_text(originals[path] + "\n# an edit\n")
        assert "Data and pipelines are up to date" in dvc(root, env, "status")
        shared.write_text(originals[shared] + "\n# an edit\n")
        stale = set(re.findall(r"^(\w+):$", dvc(root, env, "status"), re.MULTILINE))
        assert stale == set(STAGES)
    finally:
        for path, text in originals.items():
            path.write_text(text)
    assert "Data and pipelines are up to date" in dvc(root, env, "status")


def test_unet_params_rerun_only_unet_and_evaluate_with_the_same_judge(project):
    root, env, _ = project
    before = json.loads((root / "artifacts/eval/metrics.json").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["unet"]["steps"] = 5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = ldmflow(root, env, "run")
    outcomes = stage_outcomes(run.stdout)
    assert {s for s, state in outcomes.items() if state == "ran"} == {"train_unet", "evaluate"}
    assert "Data and pipelines are up to date" in dvc(root, env, "status")
    assert "judge: reused" in run.stdout + run.stderr  # not retrained for a new U-Net
    after = json.loads((root / "artifacts/eval/metrics.json").read_text())
    for real in ("r_precision_judge_ceiling", "fd_judge_floor", "kid_judge_floor", "precision_judge_real"):
        assert after[real] == before[real], real  # what the judge says of real images did not move


def test_generate_writes_an_image(project):
    root, env, _ = project
    ldmflow(root, env, "generate", "a red circle", "-n", "4", "--out", "grid.png")
    with Image.open(root / "grid.png") as img:
        assert img.format == "PNG"
        assert img.size[0] >= 16 * 2 and img.size[1] >= 16


def test_the_champions_views_from_the_command_line(project):
    root, env, _ = project
    walk = ldmflow(root, env, "interpolate", "a red circle", "a blue square", "--frames=3", "--out=w.png")
    assert "'a red circle' to 'a blue square' at seed 0" in walk.stdout
    with Image.open(root / "w.png") as img:
        assert img.size[0] >= 3 * 16 > img.size[1]  # one row of three frames
    space = ldmflow(root, env, "latents", "--out", "latents.png")
    assert "held-out latents" in space.stdout and "channel mean/std" in space.stdout
    assert (root / "latents.png").stat().st_size > 10_000
    why = ldmflow(root, env, "explain", "a red circle", "a blue square", "--out", "attention.png")
    assert "the attention maps of 2 sample(s)" in why.stdout and "circle" in why.stdout
    assert (root / "attention.png").stat().st_size > 10_000
    refused = ldmflow(root, env, "interpolate", "a", "b", "--seeds", "1", "2", check=False)
    assert refused.returncode == 2 and "two prompts walk at one seed" in refused.stderr


@pytest.mark.faults
def test_the_served_champion_refuses_requests_past_its_limits_over_http(project, fault):
    """`mlflow models serve` on 127.0.0.1 (stopped at the end): a request past a limit gets HTTP 400
    naming the limit before any sampling; a request within them gets its PNGs."""
    root, env, _ = project
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = f"sqlite:///{root / 'mlflow.db'}"  # both: tests before this one set MLflow's variables
    serve_env = {**env, "MLFLOW_TRACKING_URI": registry, "MLFLOW_REGISTRY_URI": registry}
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/ldmflow@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=root, env=serve_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip

    def invoke(body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer in 180 s"
                time.sleep(1)
        status, answer = invoke({"inputs": {"prompt": ["a red circle"] * 17}})
        assert status == 400 and "17 prompts; a request takes 1 to 16" in answer["message"]
        fault("served model: 17 prompts over HTTP", f"refused: HTTP {status}, {answer['message'][:60]}")
        params = {"num_inference_steps": 0, "guidance_scale": 1e9}
        status, answer = invoke({"inputs": {"prompt": ["a red circle"]}, "params": params})
        assert status == 400 and "num_inference_steps=0" in answer["message"]
        assert "guidance_scale=1000000000.0" in answer["message"]
        fault("served model: 0 steps, guidance 1e9 over HTTP", f"refused: HTTP {status}, naming both limits")
        status, answer = invoke({"inputs": {"prompt": ["a circle"]}, "params": {"num_inference_steps": 2}})
        assert status == 200 and len(answer["predictions"]) == 1
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        server.stderr.close()


def test_config_error_names_the_key(project):
    root, env, _ = project
    proc = ldmflow(root, env, "run", "--set", "unet.stepz=3", check=False)
    assert proc.returncode == 2
    assert "unet.stepz" in proc.stderr


def test_an_override_run_registers_lineage_of_its_own(project, tmp_path):
    """`--set` leaves dvc.lock alone, so the version it registers carries the run's own lineage: its params
    (the overrides that turn params.yaml into them, their hash) and the md5s DVC gives the inputs it read,
    not the lock's; `ldmflow lineage` says the lock does not describe it and how to run it again. (Last in
    this module: the override run's U-Net is on disk, not in dvc.lock.)"""
    root, env, _ = project
    ldmflow(root, env, "run")  # the state dvc.lock records (up to date when the tests above ran)
    lock = (root / "dvc.lock").read_text()
    run = ldmflow(root, env, "run", "train_unet", "evaluate", "--set", "unet.steps=3")
    version = re.search(r"registered ldmflow version (\d+)", run.stdout + run.stderr)[1]
    assert (root / "dvc.lock").read_text() == lock

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    lineage = {k: v for k, v in client.get_model_version("ldmflow", version).tags.items() if "lineage." in k}
    assert not [k for k in lineage if k.startswith("lineage.dvc_lock.")], lineage
    assert lineage["lineage.source"] == "run" and "params differ from params.yaml" in lineage["lineage.why"]
    assert json.loads(lineage["lineage.overrides"]) == ["unet.steps=3"]
    recorded = client.get_model_version("ldmflow", str(int(version) - 1)).tags  # the run before: params.yaml
    assert recorded["lineage.source"] == "dvc.lock" and "lineage.dvc_lock.artifacts/unet" in recorded
    assert lineage["lineage.params_hash"] != recorded["lineage.params_hash"]

    # the md5s DVC records for the inputs as they are now: `dvc commit` in a copy of the project
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True, ignore=shutil.ignore_patterns(".prefect", "mlflow.db"))
    dvc(copy, env, "commit", "-f", "-q", "evaluate")
    deps = yaml.safe_load((copy / "dvc.lock").read_text())["stages"]["evaluate"]["deps"]
    inputs = {d["path"]: d["md5"] for d in deps if d["path"].startswith(("data/", "artifacts/"))}
    assert set(inputs) == {"data/ingested", "artifacts/vae", "artifacts/text", "artifacts/unet"}
    assert {path: lineage[f"lineage.run.{path}"] for path in inputs} == inputs
    assert inputs["artifacts/unet"] != recorded["lineage.dvc_lock.artifacts/unet"]  # a U-Net of 3 steps

    shown = ldmflow(root, env, "lineage", f"models:/ldmflow/{version}").stdout
    assert "dvc.lock does not describe it" in shown and "ldmflow run --set unet.steps=3" in shown
    assert inputs["artifacts/unet"] in shown and "dvc checkout" not in shown
    ran = yaml.safe_load(ldmflow(root, env, "lineage", f"models:/ldmflow/{version}", "--run-params").stdout)
    assert ran["unet"]["steps"] == 3
    refused = ldmflow(root, env, "lineage", f"models:/ldmflow/{version}", "--dvc-lock", check=False)
    assert refused.returncode == 1 and "dvc.lock does not describe" in refused.stderr
