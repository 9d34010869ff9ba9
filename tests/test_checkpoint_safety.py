"""Checkpoints are read as data: a file that would run code when unpickled, or a checkpoint.json that names
files outside the checkpoint, is refused (with its checksums in order, as anyone who can write to the
bucket could make them), and training resumes from the newest checkpoint that passes every check."""

from __future__ import annotations

import json
import pathlib
import random

import numpy as np
import pytest
import torch
from projects import TINY

from tasks.common.config import config_from_dict
from tasks.train_unet.checkpoints import (
    Checkpoints,
    CorruptCheckpoint,
    Position,
    resume_latest,
    save_checkpoint,
)
from tasks.train_unet.trainer import UnetTraining, make_accelerator, rng_state, set_rng_state


class RunsCode:
    """Unpickling this touches a file: what a hostile state.pt could do instead."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


@pytest.fixture
def training():
    u = config_from_dict(TINY).unet
    return UnetTraining.build(u, make_accelerator(u), (4, 4, 4), 8)


def good_checkpoint(training, checkpoints: Checkpoints, step: int, folder: pathlib.Path) -> None:
    save_checkpoint(training, checkpoints, Position(step, 1, 2), folder / f"save-{step}", {})


@pytest.mark.faults
def test_a_checkpoint_that_would_run_code_is_refused_and_the_one_before_resumed(
    tmp_path, object_store, training, fault
):
    checkpoints = Checkpoints(object_store, object_store.key("checkpoints", "run"), total_limit=3)
    good_checkpoint(training, checkpoints, 10, tmp_path)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "unet.safetensors").write_bytes((tmp_path / "save-10" / "unet.safetensors").read_bytes())
    pwned = tmp_path / "pwned"
    torch.save({"optimizer": RunsCode(pwned)}, planted / "state.pt")
    (planted / "rng.json").write_text((tmp_path / "save-10" / "rng.json").read_text())
    checkpoints.save(
        20, {n: planted / n for n in ("unet.safetensors", "state.pt", "rng.json")}, {"epoch": 1, "batch": 0}
    )

    position = resume_latest(training, checkpoints, tmp_path / "resume")
    assert not pwned.exists(), "unpickling the checkpoint ran code"
    assert (position.step, position.epoch, position.batch) == (10, 1, 2)
    fault("newest checkpoint's state.pt pickles code", f"refused, no code ran; resumed at {position.step}")


@pytest.mark.faults
def test_file_names_in_checkpoint_json_are_allow_listed(tmp_path, object_store, training, fault):
    checkpoints = Checkpoints(object_store, object_store.key("checkpoints", "names"), total_limit=3)
    good_checkpoint(training, checkpoints, 10, tmp_path)
    where = checkpoints.prefix + "/step-00000020"
    outside = tmp_path / "escaped"
    for name in ("../../escaped", str(outside)):  # (SeaweedFS refuses `..` in keys; AWS S3 takes them)
        marker = {"step": 20, "files": {name: "0" * 64}, "epoch": 0, "batch": 0}
        object_store.put_bytes(f"{where}/checkpoint.json", json.dumps(marker).encode())
        with pytest.raises(CorruptCheckpoint, match=r"not among"):
            checkpoints.load(20, tmp_path / "a" / "b")
        assert not outside.exists()
    step = resume_latest(training, checkpoints, tmp_path / "resume").step
    assert step == 10
    fault("checkpoint.json names ../ and absolute files", f"refused, nothing written; resumed at step {step}")


@pytest.mark.faults
def test_no_usable_checkpoint_starts_from_step_0(tmp_path, object_store, training, fault):
    checkpoints = Checkpoints(object_store, object_store.key("checkpoints", "none"), total_limit=3)
    object_store.put_bytes(checkpoints.prefix + "/step-00000010/checkpoint.json", b"{not json")
    assert resume_latest(training, checkpoints, tmp_path / "resume") == Position()
    fault("the only checkpoint is corrupt (checkpoint.json not JSON)", "reported; training starts at step 0")


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
