"""The project's local run state under `.ldmflow/`: git-ignored, owner-only, and never a stage's output.

It holds the embedded S3 server's data and credentials, the MLflow tracking DB, Prefect's home, local
copies of cache shards and checkpoints. Deleting it loses run history and caches, never a result: the
stage outputs live under `data/` and `artifacts/` (tasks/common/paths.py names them)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


def private_dir(path: Path) -> Path:
    """`path` as a folder only its owner can enter (created with its parents if missing): local run
    state holds credentials, the tracking DB and Prefect's."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """`data` into `path`, readable by its owner alone from the first byte (made aside with mode 0600, then
    renamed over any older file, whatever that one's mode was)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@dataclass(frozen=True)
class LocalState:
    root: Path  # the project's root

    @classmethod
    def at(cls, root: str | Path = "."):
        return cls(Path(root).resolve())

    @property
    def state(self) -> Path:
        return self.root / ".ldmflow"

    @property
    def s3_state(self) -> Path:
        return self.state / "s3"

    @property
    def shard_cache(self) -> Path:
        return self.state / "shards"

    @property
    def local_checkpoints(self) -> Path:
        return self.state / "checkpoints"

    @property
    def champions(self) -> Path:
        return self.state / "champion"

    @property
    def prefect_home(self) -> Path:
        return self.state / "prefect"

    @property
    def tracking_db(self) -> Path:
        return self.state / "mlflow.db"

    @property
    def tracking_artifacts(self) -> Path:
        return self.state / "mlartifacts"
