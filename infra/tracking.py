"""MLflow tracking and registry: the one place that talks to MLflow.

Runs are handled through `MlflowClient` with explicit run ids (not the fluent, thread-local active run),
so logging works the same whether a stage runs in a Prefect worker thread or under `dvc repro`.
A pipeline run is a parent run; each stage is a nested run (tag `mlflow.parentRunId`).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from PIL import Image

from infra.processes import pid_alive
from infra.state import LocalState, private_dir

if TYPE_CHECKING:
    from infra.s3.embedded import StorageSettings

PARENT_RUN_ENV = "LDMFLOW_PARENT_RUN_ID"
# who made a run: close_stale_runs closes the ones whose process is gone
PROJECT_TAG, HOST_TAG, PID_TAG = "ldmflow.project", "ldmflow.host", "ldmflow.pid"
_swept: set[tuple[str, str, str]] = set()  # (tracking URI, experiment, project) this process has swept
# The registry's aliases (tasks/evaluate/champion.py's gate decides which a new version gets): the best
# model so far, and a newer version that did not beat it.
CHAMPION, CHALLENGER = "champion", "challenger"


class TrackingSettings(Protocol):
    """What the project's `tracking` params section says (tasks/common/config.py's TrackingConfig)."""

    uri: str | None  # None: SQLite in the project's local state
    experiment: str
    registered_model: str


class Settings(Protocol):
    """The project's config (tasks/common/config.py's Config): tracking reads its `tracking` section (and
    `storage`, where a tracking server's artifacts go), and logs the sections a stage names as that
    stage's params."""

    @property
    def tracking(self) -> TrackingSettings: ...

    @property
    def storage(self) -> StorageSettings: ...


def tracking_uri(cfg: Settings, paths: LocalState) -> str:
    """`tracking.uri` from params, else SQLite under the project's state dir (the registry needs a DB)."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    private_dir(paths.tracking_db.parent)
    return f"sqlite:///{paths.tracking_db}"


ARTIFACTS_FOLDER = "mlflow"  # s3://<bucket>/mlflow: a tracking server's artifacts, beside the caches' prefix


def artifact_location(cfg: Settings, paths: LocalState) -> str | None:
    """Where a new experiment keeps its artifacts. The embedded default: a local folder beside the DB. A
    tracking server with the project's S3 configured: that S3 (`s3://<bucket>/mlflow`), which every client
    writes and reads directly; through the server's artifact proxy, a Stable Diffusion-sized model is
    gigabytes per request. Any other store (a tracking server alone, a database URI): its own default."""
    if not cfg.tracking.uri:
        paths.tracking_artifacts.mkdir(parents=True, exist_ok=True)
        return paths.tracking_artifacts.as_uri()
    if _artifacts_in_project_s3(cfg):
        return f"s3://{cfg.storage.bucket}/{ARTIFACTS_FOLDER}"
    return None


def _artifacts_in_project_s3(cfg: Settings) -> bool:
    """A tracking server (over HTTP) and the project's own S3 endpoint, which then holds the artifacts."""
    server = (cfg.tracking.uri or "").startswith(("http://", "https://"))
    return server and cfg.storage.endpoint_url is not None


def connect(cfg: Settings, paths: LocalState) -> tuple[MlflowClient, str]:
    """Point MLflow at the configured store; return a client and the experiment id (created if missing).
    MLflow's S3 client reads its endpoint from MLFLOW_S3_ENDPOINT_URL: with a tracking server, unless set,
    the project's S3."""
    uri = tracking_uri(cfg, paths)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if _artifacts_in_project_s3(cfg):
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", cfg.storage.endpoint_url)
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return client, exp.experiment_id
    location = artifact_location(cfg, paths)
    return client, client.create_experiment(cfg.tracking.experiment, artifact_location=location)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Run:
    """One MLflow run, logged through the client with its explicit id."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    # Each of these is one `log_batch`: one request to a tracking server (one transaction on SQLite),
    # where a call per value made a stage wait on a round trip for each.
    def log_params(self, params: dict[str, Any]) -> None:
        values = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in flatten(params).items()}
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_image(self, image: np.ndarray | Image.Image, artifact_file: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """A table MLflow's UI shows as one (a JSON artifact of columns and rows)."""
        import pandas as pd

        self.client.log_table(self.run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def close_stale_runs(client: MlflowClient, experiment_id: str, paths: LocalState) -> list[str]:
    """Mark KILLED the runs of this project, made on this host, that are still RUNNING although the
    process that made them is gone (killed, crashed): their ids. Runs of other projects or hosts (a
    shared tracking server) are left alone."""
    project = str(paths.root)
    if "'" in project:  # no way to quote it in a search filter
        return []
    stale = []
    for found in client.search_runs(
        [experiment_id],
        f"attributes.status = 'RUNNING' and tags.`{PROJECT_TAG}` = '{project}'",
        max_results=1000,
    ):
        tags = found.data.tags
        pid = tags.get(PID_TAG, "")
        if tags.get(HOST_TAG) == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
            client.set_tag(found.info.run_id, "ldmflow.end", f"process {pid} was gone: marked KILLED")
            client.set_terminated(found.info.run_id, status="KILLED")
            stale.append(found.info.run_id)
    if stale:
        print(f"mlflow: {len(stale)} run(s) left RUNNING by a process that is gone, marked KILLED")
    return stale


@contextmanager
def run(
    cfg: Settings, paths: LocalState, name: str, parent_run_id: str | None = None, tags: dict | None = None
) -> Iterator[Run]:
    """A run that ends FINISHED, or FAILED if the body raises. Nested when a parent id is given. Runs a
    killed process left RUNNING are closed first (see close_stale_runs), once per process and project."""
    client, experiment_id = connect(cfg, paths)
    swept = (tracking_uri(cfg, paths), experiment_id, str(paths.root))
    if swept not in _swept:
        close_stale_runs(client, experiment_id, paths)
        _swept.add(swept)
    owner = {PROJECT_TAG: str(paths.root), HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    all_tags = {"ldmflow.stage": name, **owner, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    info = client.create_run(experiment_id, run_name=name, tags=all_tags).info
    status = "FAILED"
    try:
        yield Run(client, info.run_id)
        status = "FINISHED"
    finally:
        client.set_terminated(info.run_id, status=status)


@contextmanager
def stage_run(
    cfg: Settings, paths: LocalState, stage: str, sections: tuple[str, ...], parent_run_id: str | None = None
) -> Iterator[Run]:
    """A stage's run, nested under `parent_run_id` (or the run named by LDMFLOW_PARENT_RUN_ID) if any."""
    with run(cfg, paths, stage, parent_run_id=parent_run_id or os.environ.get(PARENT_RUN_ENV)) as r:
        values = {s: getattr(cfg, s) for s in sections}
        r.log_params(
            {s: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for s, v in values.items()}
        )
        yield r


def register_text_to_image(
    stage: Run,
    cfg: Settings,
    model_code: Path,
    artifacts: dict[str, str],
    signature: Any,
    code_paths: list[str],
    alias: str,
    tags: dict[str, str],
) -> str:
    """Log the pyfunc model in the stage's run as a "model from code" (`model_code`, a Python file that
    calls mlflow.models.set_model: no pickle), register a version with `tags`, and point `alias` at it."""
    with mlflow.start_run(run_id=stage.run_id):
        info = mlflow.pyfunc.log_model(
            name="text_to_image",
            python_model=str(model_code),
            artifacts=artifacts,
            signature=signature,
            code_paths=code_paths,
            pip_requirements=_model_requirements(),
        )
    name = cfg.tracking.registered_model
    version = mlflow.register_model(info.model_uri, name, tags=tags).version
    stage.client.set_registered_model_alias(name, alias, version)
    stage.set_tags({"ldmflow.registered_version": str(version), "ldmflow.alias": alias})
    return str(version)


def _model_requirements() -> list[str]:
    """Pinned runtime requirements of the pyfunc model (explicit: no slow environment inference)."""
    from importlib.metadata import version

    return [
        f"{p}=={version(p)}" for p in ("torch", "diffusers", "transformers", "mlflow", "pillow", "pandas")
    ]


def current_champion(client: MlflowClient, name: str):
    """The ModelVersion the `champion` alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no registered model, or no champion yet
        return None


def champion_part(cfg: Settings, paths: LocalState, part: str) -> tuple[str, Path] | None:
    """One part of the registered champion (`unet`, `vae`, ...), downloaded under .ldmflow/champion/:
    (its version, the folder). None when there is no champion yet. Each process of a distributed run
    downloads its own copy, so none reads a half-written one (a training run counts the weights it starts
    from, not this folder: tasks/train_unet/checkpoints.py's run_identity)."""
    from models.pyfunc import PIPELINE

    client, _ = connect(cfg, paths)
    name = cfg.tracking.registered_model
    champion = current_champion(client, name)
    if champion is None:
        return None
    rank = os.environ.get("RANK", "0")
    folder = paths.champions / f"{name}-v{champion.version}-rank{rank}"
    artifacts = f"models:/{name}/{champion.version}/artifacts"
    listed = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(artifact_uri=artifacts)}
    # the part inside the pipeline folder; a model registered before it has the part as its own artifact
    uri = f"{artifacts}/{PIPELINE}/{part}" if PIPELINE in listed else f"{artifacts}/{part}"
    return champion.version, Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))


def download_model_artifacts(uri: str, dst: Path) -> dict[str, str]:
    """The artifacts of the model `uri` names (`models:/NAME/VERSION`, `models:/NAME@ALIAS`, `models:/m-ID`
    or a model folder's URI), downloaded under `dst`: name -> local path (`pipeline`, or the four parts of a
    model registered before it). Only the artifacts: not the model's MLmodel, logged code or pickle, which
    whoever can write to the registry controls; models/pyfunc.py's `load_pipeline` reads them as data."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository as Models

    root = Models.get_underlying_uri(uri) if Models.is_models_uri(uri) else uri
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{root.rstrip('/')}/artifacts", dst_path=str(dst)
    )
    # an artifact keeps its file's name: `sampling` of an older model is sampling.json
    return {p.stem: str(p) for p in sorted(Path(folder).iterdir())}


def registered_pipeline(uri: str):
    """The LatentDiffusionPipeline of the model `uri` names, built from its downloaded artifacts alone: what
    ldmflow's model commands and the gate's re-measure of a champion load (never mlflow.pyfunc.load_model,
    which runs the code logged with the model, or unpickles an older model's python_model.pkl)."""
    from models.pyfunc import load_pipeline

    with tempfile.TemporaryDirectory() as tmp:  # every part is read into memory before it goes
        return load_pipeline(download_model_artifacts(uri, Path(tmp)))


def model_version(client: MlflowClient, uri: str):
    """The ModelVersion a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI names (MlflowException, which
    says what a proper URI looks like, if it names none)."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    found = get_model_name_and_version(client, uri)
    if len(found) != 2:  # models:/m-<id>, a logged model: no registered version
        raise MlflowException(f"{uri}: names a logged model, not a registered version (models:/NAME/VERSION)")
    return client.get_model_version(*found)


def run_artifact_text(client: MlflowClient, run_id: str, artifact: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, artifact, tmp)).read_text()
