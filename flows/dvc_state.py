"""DVC decides what is stale; this module asks it, and records a finished stage in dvc.lock."""

from __future__ import annotations

from pathlib import Path

from dvc.repo import Repo


def is_up_to_date(root: Path, stage: str) -> bool:
    """True when dvc.lock matches the stage's current deps, params and outs (what `dvc status` checks)."""
    with Repo(str(root)) as repo:
        return not repo.status(targets=[stage])


def record(root: Path, stage: str) -> None:
    """Hash the stage's deps/params/outs into dvc.lock and the DVC cache, as `dvc repro` does after a cmd."""
    with Repo(str(root)) as repo:
        repo.commit(stage, force=True)
