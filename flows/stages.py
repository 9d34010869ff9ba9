"""One Prefect flow per stage. A flow composes tasks; the work lives in `tasks/`."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.config import Config
from tasks.ingest import REJECTS, read_rejects
from tasks.paths import ProjectPaths
from tasks.stages import ORDER, run_stage

# Stages that talk to object storage get retries; their caches make a retry cheap (stored shards skip).
RETRIES = {"cache_latents": 2, "embed_text": 2, "train_unet": 1}


@task(cache_policy=NO_CACHE)  # DVC, not Prefect's cache, decides whether a stage is up to date
def stage_task(name: str, cfg: Config, root: str, parent_run_id: str | None) -> dict:
    """Run one stage's work (see tasks/stages.py)."""
    return run_stage(name, cfg, ProjectPaths.at(root), parent_run_id)


REJECTS_SHOWN = 1000  # the Prefect UI lists this many rejected items; rejects.jsonl has them all


def publish_ingest_report(report: dict, ingested: Path) -> None:
    """The ingest report as Prefect table artifacts: the counts by outcome, and the rejected items."""
    rows = [{"outcome": "accepted", "count": report["accepted"]}]
    rows += [{"outcome": f"rejected: {reason}", "count": n} for reason, n in report["by_reason"].items()]
    create_table_artifact(rows, key="ingest-report", description=f"{report['total']} items read")
    if report["rejected"]:
        shown = read_rejects(ingested, limit=REJECTS_SHOWN)
        create_table_artifact(
            shown,
            key="ingest-rejects",
            description=f"{len(shown)} of {report['rejected']} rejected items (all: {ingested / REJECTS})",
        )


def make_stage_flow(name: str):
    @flow(name=name, log_prints=True)
    def stage_flow(cfg: Config, root: str = ".", parent_run_id: str | None = None) -> dict:
        task_ = stage_task.with_options(name=name, retries=RETRIES.get(name, 0), retry_delay_seconds=[2, 10])
        result = task_(name, cfg, root, parent_run_id)
        if name == "ingest":
            publish_ingest_report(result, ProjectPaths.at(root).ingested)
        return result

    stage_flow.__doc__ = f"The {name} stage."
    return stage_flow


STAGE_FLOWS = {name: make_stage_flow(name) for name in ORDER}
