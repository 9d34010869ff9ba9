"""The output contract: where each stage's outputs live and what their files are called.

Stages meet only at these outputs (the DVC outs in dvc.yaml); nothing else is shared between them. Every
file name a stage writes for another stage, for DVC's metrics and plots, or for a person is named here
once; the code that writes a file and the code that reads it both take its name from here. Torch-free:
the CLI, the flows and `ldmflow gc` read it without loading a model. The local run state (`.ldmflow/`,
no stage's output) is infra/state.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.state import LocalState

SOURCE_LISTING = "data/source_listing.json"  # what ingest reads besides params (tasks/ingest/listing.py)

# data/ingested/ (tasks/common/ingested.py is the format)
MANIFEST = "manifest.parquet"  # also each cache's: one row per item, keyed by content
INGEST_REPORT = "report.json"  # {"total", "accepted", "rejected", "by_reason"}
REJECTS = "rejects.jsonl"  # every rejected item with its reason

# artifacts/latents/, artifacts/text/ (tasks/common/content_cache.py)
CACHE_INFO = "cache.json"  # the cache's settings and its model's fingerprint

# artifacts/vae/, artifacts/unet/, artifacts/eval/
METRICS = "metrics.json"  # flat {name: number}: `dvc metrics show`
TRAIN_CURVE, VAL_CURVE = "curves/train_loss.csv", "curves/val_loss.csv"  # `dvc plots show`
SAMPLES = "samples.png"  # a grid of samples for fixed prompts
SAMPLES_LOG = "samples.jsonl"  # train_unet with unet.log_samples: each step's loss and sample ids

# artifacts/eval/
EVAL_REPORT = "report.md"  # the evaluated model's report; its pictures beside it (tasks/evaluate/views.py)
SWEEP, SWEEP_PLOT = "guidance_sweep.json", "guidance_sweep.png"

# a training run's checkpoints in object storage: written when the run completes (`ldmflow gc` reads it)
FINISHED = "finished.json"


@dataclass(frozen=True)
class ProjectPaths(LocalState):
    """The project's stage outputs, and (from LocalState) its local run state."""

    @property
    def source_listing(self) -> Path:
        return self.root / SOURCE_LISTING

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
