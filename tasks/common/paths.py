"""Where each stage's outputs and the local run state live, relative to the project root.

Stages meet only at these outputs (the DVC outs in dvc.yaml); nothing else is shared between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def private_dir(path: Path) -> Path:
    """`path` as a folder only its owner can enter (created with its parents if missing): local run
    state holds credentials, the tracking DB and Prefect's."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> ProjectPaths:
        return cls(Path(root).resolve())

    # what ingest reads besides params: a summary of the user's source (tasks/ingest/listing.py)
    @property
    def source_listing(self) -> Path:
        return self.root / "data" / "source_listing.json"

    # stage outputs (DVC-tracked)
    @property
    def ingested(self) -> Path:
        return self.root / "data" / "ingested"

    @property
    def vae(self) -> Path:
        return self.root / "artifacts" / "vae"

    @property
    def latents(self) -> Path:
        return self.root / "artifacts" / "latents"

    @property
    def text(self) -> Path:
        return self.root / "artifacts" / "text"

    @property
    def unet(self) -> Path:
        return self.root / "artifacts" / "unet"

    @property
    def eval(self) -> Path:
        return self.root / "artifacts" / "eval"

    # local run state (git-ignored, owner-only: see private_dir): embedded S3 data, tracking DB, Prefect home
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
    def prefect_home(self) -> Path:
        return self.state / "prefect"

    @property
    def tracking_db(self) -> Path:
        return self.state / "mlflow.db"

    @property
    def tracking_artifacts(self) -> Path:
        return self.state / "mlartifacts"
