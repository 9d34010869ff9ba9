"""One Prefect flow per stage. A flow composes tasks; the work lives in `tasks/`."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.config import Config
from tasks.paths import ProjectPaths
from tasks.stages import ORDER, run_stage

# Stages that talk to object storage get retries; their caches make a retry cheap (stored shards skip).
RETRIES = {"cache_latents": 2, "embed_text": 2, "train_unet": 1}


@task(cache_policy=NO_CACHE)  # DVC, not Prefect's cache, decides whether a stage is up to date
def stage_task(name: str, cfg: Config, root: str, parent_run_id: str | None) -> dict:
    """Run one stage's work (see tasks/stages.py)."""
    return run_stage(name, cfg, ProjectPaths.at(root), parent_run_id)


def publish_ingest_report(report: dict) -> None:
    """The ingest report as a Prefect table artifact: what was accepted, and every reject reason."""
    rows = [{"outcome": "accepted", "count": report["accepted"]}]
    rows += [{"outcome": f"rejected: {reason}", "count": n} for reason, n in report["by_reason"].items()]
    create_table_artifact(rows, key="ingest-report", description=f"{report['total']} items read")


def make_stage_flow(name: str):
    @flow(name=name, log_prints=True)
    def stage_flow(cfg: Config, root: str = ".", parent_run_id: str | None = None) -> dict:
        task_ = stage_task.with_options(name=name, retries=RETRIES.get(name, 0), retry_delay_seconds=[2, 10])
        result = task_(name, cfg, root, parent_run_id)
        if name == "ingest":
            publish_ingest_report(result)
        return result

    stage_flow.__doc__ = f"The {name} stage."
    return stage_flow


STAGE_FLOWS = {name: make_stage_flow(name) for name in ORDER}
