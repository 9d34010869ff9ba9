"""Local run state holds secrets: `.ldmflow/` is the owner's alone, and the embedded S3 server's
credentials file is there complete or not at all (a kill while it is written bricks nothing)."""

from __future__ import annotations

import json
import stat

import pytest

from flows import runtime
from infra.s3 import embedded
from infra.tracking import tracking_uri
from tasks.common.config import config_from_dict
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
