"""The six stages as plain functions of (config, project paths, MLflow run).

The Prefect flows (`flows/`) and DVC's stage commands (`ldmflow stage NAME`) both call `run_stage`, so
`ldmflow run` and `dvc repro` execute the same code and leave the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks import launch
from tasks.config import Config
from tasks.paths import ProjectPaths
from tasks.storage import ObjectStore, object_store_from_config

if TYPE_CHECKING:  # MLflow and torch take seconds to import: the CLI (and every decode worker) imports this
    from tasks.cache import ShardMap
    from tasks.tracking import Run


def _store(cfg: Config, p: ProjectPaths) -> ObjectStore:
    return object_store_from_config(cfg.storage, p.s3_state)


def _ingest(cfg: Config, p: ProjectPaths, run: Run) -> dict:
    from tasks.ingest import read_rejects, run_ingest

    report = run_ingest(cfg, p.ingested)
    run.log_metrics(
        {"total": report["total"], "accepted": report["accepted"], "rejected": report["rejected"]}
        | {f"rejected.{reason}": n for reason, n in report["by_reason"].items()}
    )
    run.log_artifact(p.ingested / "report.json")
    run.log_artifact(p.ingested / "rejects.jsonl")
    rejects = read_rejects(p.ingested)
    if rejects:
        run.log_table(rejects, "rejects_table.json")
    return report


def _train_vae(cfg: Config, p: ProjectPaths, run: Run) -> dict:
    from tasks.train_vae import run_train_vae

    return run_train_vae(cfg, p.ingested, p.vae, run)


def _cache_latents(cfg: Config, p: ProjectPaths, run: Run, **shard_options) -> dict:
    from tasks.cache_latents import run_cache_latents

    return run_cache_latents(cfg, p.ingested, p.vae, p.latents, _store(cfg, p), run, **shard_options)


def _embed_text(cfg: Config, p: ProjectPaths, run: Run, **shard_options) -> dict:
    from tasks.embed_text import run_embed_text

    return run_embed_text(cfg, p.ingested, p.text, _store(cfg, p), run, **shard_options)


def _train_unet(cfg: Config, p: ProjectPaths, run: Run | None) -> dict:
    from tasks.train_unet import run_train_unet

    return run_train_unet(cfg, p.latents, p.text, p.unet, _store(cfg, p), run, p.shard_cache, p.vae)


def _evaluate(cfg: Config, p: ProjectPaths, run: Run) -> dict:
    from tasks.evaluate import run_evaluate

    return run_evaluate(cfg, p.ingested, p.vae, p.unet, p.text, p.eval, run)


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # params sections the stage reads (logged to its MLflow run)
    upstream: tuple[str, ...]
    fn: Callable[[Config, ProjectPaths, Run], dict]


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("ingest", ("data",), (), _ingest),
        Stage("train_vae", ("vae",), ("ingest",), _train_vae),
        Stage("cache_latents", ("latents", "storage"), ("ingest", "train_vae"), _cache_latents),
        Stage("embed_text", ("text", "storage"), ("ingest",), _embed_text),
        Stage("train_unet", ("unet", "storage"), ("cache_latents", "embed_text"), _train_unet),
        Stage("evaluate", ("eval",), ("ingest", "train_vae", "embed_text", "train_unet"), _evaluate),
    )
}
ORDER = list(STAGES)


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


SHARDED = ("cache_latents", "embed_text")  # stages whose work is many shard jobs (tasks/cache.py)
DISTRIBUTED = ("train_unet",)  # stages that train with DDP under torchrun / accelerate launch


def run_stage(
    name: str,
    cfg: Config,
    paths: ProjectPaths,
    parent_run_id: str | None = None,
    map_shards: ShardMap | None = None,
) -> dict:
    """Run one stage inside its own MLflow run (nested under the pipeline run when there is one).

    `map_shards` runs a SHARDED stage's shard jobs (default: one after another, here); Prefect flows pass
    one that maps them as tasks over the configured task runner.
    """
    from tasks.tracking import stage_run

    stage = STAGES[name]
    if launch.launched_distributed():  # torchrun / accelerate launch: every process runs this
        if name not in DISTRIBUTED:
            raise ValueError(f"only {', '.join(DISTRIBUTED)} runs on several processes, not {name}")
        if launch.rank() != 0:  # the main process alone logs to MLflow
            return stage.fn(cfg, paths, None)
    options = {"map_shards": map_shards} if map_shards is not None else {}
    with stage_run(cfg, paths, name, ("seed", *stage.sections), parent_run_id) as run:
        return stage.fn(cfg, paths, run, **options)
