"""Local run state holds secrets: `.ldmflow/` is the owner's alone, the embedded S3 server's credentials
file is there complete or not at all (a kill while it is written bricks nothing), and no secret sits in a
project file another user can read."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from projects import BIN, cli_env

from flows import dvc_state, runtime
from infra.s3 import embedded
from infra.storage import ObjectStore
from infra.tracking import tracking_uri
from tasks.common.config import StorageConfig, config_from_dict
from tasks.common.paths import ProjectPaths


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_state_folder_is_owner_only_whoever_creates_it(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.os, "environ", {})  # prepare() sets variables: keep them out of this process
    for name, make in {
        "runtime": lambda paths: runtime.prepare(paths),
        "tracking": lambda paths: tracking_uri(config_from_dict({}), paths),
        "s3": lambda paths: embedded.load_or_create_credentials(paths.s3_state),
    }.items():
        paths = ProjectPaths.at(tmp_path / name)
        make(paths)
        assert mode(paths.state if name != "s3" else paths.s3_state) == 0o700, name
    (tmp_path / "loose" / ".ldmflow").mkdir(parents=True, mode=0o755)
    tracking_uri(config_from_dict({}), ProjectPaths.at(tmp_path / "loose"))  # made by an older version
    assert mode(tmp_path / "loose" / ".ldmflow") == 0o700


def test_a_kill_while_the_credentials_are_written_leaves_no_file(tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a signal does mid-write

    monkeypatch.setattr(embedded.json, "dump", killed)
    with pytest.raises(KeyboardInterrupt):
        embedded.load_or_create_credentials(tmp_path)
    assert not (tmp_path / "credentials.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".credentials-")]


def test_a_half_written_credentials_file_is_replaced_not_fatal(tmp_path):
    (tmp_path / "credentials.json").write_text("")  # what an older version left after a kill
    access, secret = embedded.load_or_create_credentials(tmp_path)
    saved = json.loads((tmp_path / "credentials.json").read_text())
    assert saved == {"access_key": access, "secret_key": secret}
    assert mode(tmp_path / "credentials.json") == 0o600
    assert embedded.load_or_create_credentials(tmp_path) == (access, secret)  # kept from now on


OTHER_UID = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]  # nobody: another user


@pytest.mark.faults
def test_the_embedded_dvc_remote_leaves_no_secret_where_another_user_can_read_it(
    s3_server, s3_state_dir, fault
):
    """`ldmflow run` makes the embedded server the project's DVC remote. Its keys must stay in the owner-only
    state folder: a project folder is usually readable by others (0755), and so is `.dvc/config.local`."""
    bucket = f"remote-{uuid.uuid4().hex[:10]}"
    root = Path(tempfile.mkdtemp(prefix="ldmflow-remote-"))  # not under pytest's owner-only folder
    root.chmod(0o755)
    env = {
        k: v for k, v in cli_env(s3_server).items() if not k.startswith("AWS_")
    }  # DVC gets no keys but ours
    try:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, env=env, check=True)
        dvc_state.ensure_remote(root, StorageConfig(bucket=bucket), s3_state_dir)
        secret = s3_server.secret_key.encode()
        assert [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()] == []
        keys = embedded.aws_credentials_file(s3_state_dir)
        assert mode(keys) == 0o600 and mode(keys.parent) == 0o700
        if os.geteuid() == 0 and shutil.which("setpriv"):  # a real second user reads what it can
            seen = subprocess.run([*OTHER_UID, "sh", "-c", "cat .dvc/config .dvc/config.local"], cwd=root,
                                  capture_output=True)  # fmt: skip
            assert seen.returncode == 0 and b"endpointurl" in seen.stdout and secret not in seen.stdout
            fault("local attacker: another uid reads .dvc/ for the S3 secret",
                  "not there: DVC reads it from the owner-only state folder")  # fmt: skip
        # and DVC still pushes, with the keys it reads from the state folder alone
        (root / "data.txt").write_text("the project's output\n")
        dvc = [str(BIN / "dvc")]
        subprocess.run([*dvc, "add", "-q", "data.txt"], cwd=root, env=env, check=True)
        pushed = subprocess.run([*dvc, "push"], cwd=root, env=env, capture_output=True, text=True)
        assert pushed.returncode == 0 and "1 file pushed" in pushed.stdout, pushed.stdout + pushed.stderr
    finally:
        shutil.rmtree(root)
        store = ObjectStore(s3_server.endpoint_url, bucket, "", s3_server.region, s3_server.access_key,
                            s3_server.secret_key)  # fmt: skip
        for key in store.list_keys(""):
            store.delete(key)
        store.client.delete_bucket(Bucket=bucket)
