"""DVC decides what is stale; this module asks it, records a finished stage in dvc.lock, and shares the
outputs through the project's object storage as the default DVC remote."""

from __future__ import annotations

from pathlib import Path

from dvc.repo import Repo

from tasks.common.config import StorageConfig

REMOTE = "ldmflow"
REMOTE_FOLDER = "dvc"  # s3://<bucket>/dvc, beside the caches' prefix


def is_up_to_date(root: Path, stage: str) -> bool:
    """True when dvc.lock matches the stage's current deps, params and outs (what `dvc status` checks)."""
    with Repo(str(root)) as repo:
        return not repo.status(targets=[stage])


def record(root: Path, stage: str) -> None:
    """Hash the stage's deps/params/outs into dvc.lock and the DVC cache, as `dvc repro` does after a cmd."""
    with Repo(str(root)) as repo:
        repo.commit(stage, force=True)


def ensure_remote(root: Path, storage: StorageConfig, s3_state: Path) -> str:
    """Make the project's object storage the default DVC remote (`ldmflow`, s3://<bucket>/dvc); returns its
    URL. A configured endpoint is shared: it goes to .dvc/config, which is committed, so a teammate's clone
    finds it, and credentials come from where boto3 finds them for the caches (environment, ~/.aws); they
    are never written. The embedded server is this machine's alone: its endpoint goes to .dvc/config.local,
    which DVC keeps out of git, and its keys stay in the owner-only state folder, where DVC reads them from
    an AWS credentials file (`credentialpath`, `profile`): no project file holds the secret. DVC trusts only
    the server's own CA (`ssl_verify`), so a listener another user put on the port gets nothing."""
    from infra.s3.embedded import AWS_PROFILE, aws_credentials_file
    from infra.storage import object_store_from_config

    url = f"s3://{storage.bucket}/{REMOTE_FOLDER}"
    # the server started and the bucket made when missing: a run of a stage without object storage (ingest
    # alone) makes neither
    store = object_store_from_config(storage, s3_state)
    if storage.endpoint_url is None:  # the embedded server: its endpoint, and where its keys are
        shared: dict[str, str] = {}
        local = {"url": url, "endpointurl": store.endpoint_url, "region": store.region,
                 "credentialpath": str(aws_credentials_file(s3_state)), "profile": AWS_PROFILE,
                 "ssl_verify": store.ca_bundle}  # fmt: skip
    else:
        shared = {"url": url, "endpointurl": storage.endpoint_url, "region": storage.region}
        local = {}
    with Repo(str(root)) as repo:
        for level, settings in (("repo", shared), ("local", local)):
            with repo.config.edit(level) as conf:
                if settings:
                    conf["remote"][REMOTE] = settings
                    conf["core"]["remote"] = REMOTE
                elif REMOTE in conf["remote"]:  # a remote of the other kind, left from before
                    del conf["remote"][REMOTE]
                    if conf["core"].get("remote") == REMOTE:
                        del conf["core"]["remote"]
    return url


def push(root: Path) -> int:
    """Push every output dvc.lock records to the project's remote; returns how many files were sent."""
    with Repo(str(root)) as repo:
        return repo.push(remote=REMOTE)
