"""The six stages, declared once: what each reads, the code it runs, what it writes, and how it is run.

This declaration is the pipeline's one graph, and every per-stage fact lives in it:
- `dvc.yaml` is generated from it (`ldmflow dvc-yaml`; a test fails when the committed file differs);
- the Prefect flows (flows/stage_flows.py, flows/pipeline.py) run its stages in this order, with the
  retries, mapped jobs and published artifacts a stage declares, and hold no stage name of their own;
- `ldmflow stage NAME` runs a stage by its `entry`, starting the embedded S3 server for a stage that
  declares `object_storage`.

A stage's `code` names folders where it can, so a new module cannot be forgotten: its own file or folder,
what every stage shares (`tasks/common`: config, the output contract, keys, the cache and ingested formats),
and the files of `models/` it uses. Infrastructure (`infra/`: the S3 server and client, MLflow tracking,
processes, progress) decides no output and is no stage's dep, so editing it re-runs nothing. A test runs
each stage and checks that every project module it imports lies under its deps or in `infra/`, and that
every params section it reads is among its `params`.

Torch-free and MLflow-free: the CLI imports it to list the stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tasks.common.paths import METRICS, SOURCE_LISTING, SWEEP, TRAIN_CURVE, VAL_CURVE

SHARED = "tasks/common"


@dataclass(frozen=True)
class Stage:
    name: str
    upstream: tuple[str, ...]  # stages whose outputs this one reads
    params: tuple[str, ...]  # params.yaml sections (or top-level keys) the stage's code reads
    code: tuple[str, ...]  # folders and files of the stage's code (SHARED is added to every stage)
    outs: tuple[str, ...]  # what it writes, relative to the project root
    entry: str  # the module whose `main(cfg, paths, tracker, ...)` runs it
    sources: tuple[str, ...] = ()  # other files it reads (ingest: the summary of the user's source)
    # How it runs (flows/ and the CLI read these):
    object_storage: bool = False  # reads or writes the S3 store (the embedded server runs for it)
    retries: int = 0  # whole-stage retries under Prefect (a stage whose jobs are mapped retries each job)
    maps: Literal["map_decode", "map_shards"] | None = None  # its `main` option that its many jobs take,
    # so Prefect runs them as tasks on the flow's task runner (flows/stage_flows.py has one map for each)
    publishes: Literal["ingest_report", "evaluation_report"] | None = None  # a Prefect artifact of its output
    distributed: bool = False  # trains with DDP under torchrun / accelerate launch

    @property
    def deps(self) -> tuple[str, ...]:
        """Upstream outputs and sources, then code: the DVC deps."""
        inputs = tuple(out for name in self.upstream for out in STAGES[name].outs)
        return (*inputs, *self.sources, SHARED, *self.code)

    @property
    def scans_source(self) -> bool:
        """It reads the user's source: a run refreshes the listing first (tasks/ingest/listing.py)."""
        return SOURCE_LISTING in self.sources


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "ingest",
            upstream=(),
            params=("seed", "data"),
            code=("tasks/ingest",),
            outs=("data/ingested",),
            entry="tasks.ingest.stage",
            sources=(SOURCE_LISTING,),
            maps="map_decode",
            publishes="ingest_report",
        ),
        Stage(
            "train_vae",
            upstream=("ingest",),
            params=("seed", "vae"),
            code=(
                "tasks/train_vae.py",
                "models/autoencoder",
                "models/pretrained.py",
                "models/sampler/latents.py",
                "models/sampler/images.py",
                "models/sampler/device.py",
            ),
            outs=("artifacts/vae",),
            entry="tasks.train_vae",
        ),  # fmt: skip
        Stage(
            "cache_latents",
            upstream=("ingest", "train_vae"),
            params=("latents", "storage"),
            code=(
                "tasks/cache_latents.py",
                "models/sampler/latents.py",
                "models/sampler/images.py",
                "models/sampler/device.py",
                "models/fingerprint.py",
            ),
            outs=("artifacts/latents",),
            entry="tasks.cache_latents",
            object_storage=True,
            maps="map_shards",
        ),  # fmt: skip
        Stage(
            "embed_text",
            upstream=("ingest",),
            params=("text", "storage"),
            code=(
                "tasks/embed_text.py",
                "models/sampler/text_encoder.py",
                "models/sampler/device.py",
                "models/fingerprint.py",
            ),
            outs=("artifacts/text",),
            entry="tasks.embed_text",
            object_storage=True,
            maps="map_shards",
        ),  # fmt: skip
        Stage(
            "train_unet",
            upstream=("cache_latents", "embed_text", "train_vae"),
            params=("seed", "unet", "storage"),
            code=(
                "tasks/train_unet",
                "models/diffusion",
                "models/pretrained.py",
                "models/sampler/unet.py",
                "models/sampler/sampling.py",
                "models/sampler/latents.py",
                "models/sampler/images.py",
                "models/sampler/device.py",
                "models/fingerprint.py",
            ),
            outs=("artifacts/unet",),
            entry="tasks.train_unet.loop",
            object_storage=True,
            retries=1,  # it streams the caches from object storage
            distributed=True,
        ),  # fmt: skip
        Stage(
            "evaluate",
            upstream=("ingest", "train_vae", "embed_text", "train_unet"),
            params=("seed", "eval", "storage", "tracking"),
            code=(
                "tasks/evaluate",
                "models/sampler",
                "models/judges",
                "models/views",
                "models/autoencoder/latent_space.py",
                "models/export.py",
                "models/pyfunc.py",
                "models/served.py",
                "models/fingerprint.py",
            ),
            outs=("artifacts/eval",),
            entry="tasks.evaluate.stage",
            object_storage=True,
            publishes="evaluation_report",
        ),  # fmt: skip
    )
}
ORDER = list(STAGES)
METRIC_FILES = tuple(f"artifacts/{stage}/{METRICS}" for stage in ("eval", "vae", "unet"))
PLOTS = {
    f"artifacts/eval/{SWEEP}": {"x": "guidance_scale", "y": ["r_precision_judge", "fd_judge"]},
    f"artifacts/vae/{TRAIN_CURVE}": {"x": "step", "y": ["train_loss"]},
    f"artifacts/unet/{TRAIN_CURVE}": {"x": "step", "y": ["train_loss"]},
    f"artifacts/unet/{VAL_CURVE}": {"x": "step", "y": ["val_loss"]},
}


def with_upstream(names: list[str]) -> list[str]:
    """The named stages and everything they depend on, in pipeline order (what `dvc repro NAME` considers)."""
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are: {', '.join(ORDER)}")
    needed: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(STAGES[name].upstream)
    return [n for n in ORDER if n in needed]


DVC_YAML_HEADER = """\
# Generated from tasks/graph.py by `ldmflow dvc-yaml`: edit the declaration there, not this file
# (a test fails when the two differ). Each cmd runs the same stage code `ldmflow run` drives through
# Prefect; `params` name what a stage reads, so `dvc repro` re-runs exactly what an edit touches.
"""


def dvc_yaml() -> str:
    """The text of `dvc.yaml` for this declaration."""
    import yaml

    stages = {
        s.name: {"cmd": f"ldmflow stage {s.name}", "deps": list(s.deps), "params": list(s.params),
                 "outs": list(s.outs)}
        for s in STAGES.values()
    }  # fmt: skip
    plots = [{path: spec} for path, spec in PLOTS.items()]
    body = yaml.safe_dump(
        {"stages": stages, "metrics": list(METRIC_FILES), "plots": plots}, sort_keys=False, width=110
    )
    return DVC_YAML_HEADER + body
