"""One Prefect flow per stage. A flow composes tasks; the work lives in `tasks/`.

No `from __future__ import annotations` here: a scheduled run gets the pipeline flow cloudpickled by value
into a new process, and a string annotation such as "Config" then names nothing in the stage flows'
copied globals (Prefect fails validating their parameters: "Stage_FlowModel is not fully defined")."""

import time
from collections.abc import Iterator

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows.stage_run import run_stage
from infra.parallel import Pending, Ready, available_cores, in_order
from infra.progress import progress
from tasks.common.config import Config
from tasks.common.content_cache import ShardJob, ShardResult, store_shard
from tasks.common.ingested import read_rejects
from tasks.common.paths import EVAL_REPORT, REJECTS, ProjectPaths
from tasks.graph import STAGES, Stage
from tasks.ingest.preprocess import DecodeJob, Prepared, decode_chunk
from tasks.ingest.sources import Reject

JOBS_AHEAD = 2 * available_cores()  # ingest's decode jobs submitted ahead of the next result (32 items each)


# No task timeout: it cannot interrupt a worker thread. Each S3 call has its own (infra/storage.py).
@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15])
def shard_task(job: ShardJob) -> ShardResult:
    """Compute and store one cache shard (retried: its S3 calls can fail, and a stored shard is skipped)."""
    return store_shard(job)


# A store that is over before this is not worth watching: it gets no progress artifact. (Each artifact call
# waits on the Prefect server; on a nightly run's one or two new shards they took a third of the stage.)
PROGRESS_AFTER_SECONDS = 2.0


def store_shards_with_prefect(jobs: list[ShardJob], desc: str) -> list[ShardResult]:
    """The shard jobs as mapped Prefect tasks on the flow's task runner; shards done/total shown as a
    progress bar here and, once the store has taken PROGRESS_AFTER_SECONDS, as a progress artifact in the
    flow run."""
    if not jobs:
        return []
    started = time.monotonic()
    futures = shard_task.map(jobs)
    artifact = None
    results = []
    for done, future in enumerate(progress(futures, desc=desc, unit="shard"), start=1):
        results.append(future.result())
        percent = 100.0 * done / len(jobs)
        if artifact is not None:
            update_progress_artifact(artifact, percent)
        elif time.monotonic() - started >= PROGRESS_AFTER_SECONDS:
            artifact = create_progress_artifact(percent, description=f"{desc}: {len(jobs)} shards to store")
    return results


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def decode_task(job: DecodeJob) -> list[Prepared | Reject]:
    """Read and decode one chunk of the source's items (retried: reads from S3 can fail)."""
    return decode_chunk(job)


def decode_with_prefect(jobs: Iterator[DecodeJob]) -> Iterator[list[Prepared | Reject]]:
    """The ingest's decode jobs as Prefect tasks on the flow's task runner (threads, a Dask cluster), a
    few ahead of the one whose results come back next: in order, so the output is the same whatever runs
    them, and memory holds a few jobs however large the source. A job with nothing to read (its items
    unchanged since the last ingest) is done here: a task run costs more than it."""

    def submit(job: DecodeJob) -> Pending[list[Prepared | Reject]]:
        return decode_task.submit(job) if job.needs_reading else Ready(decode_chunk(job))

    return in_order(submit, jobs, JOBS_AHEAD)


# A stage's `maps` option (tasks/graph.py): how its many jobs become Prefect tasks.
MAPS = {"map_decode": decode_with_prefect, "map_shards": store_shards_with_prefect}


@task(cache_policy=NO_CACHE)  # DVC, not Prefect's cache, decides whether a stage is up to date
def stage_task(name: str, cfg: Config, root: str, parent_run_id: str | None) -> dict:
    """Run one stage's work (see tasks/graph.py)."""
    return run_stage(name, cfg, ProjectPaths.at(root), parent_run_id)


REJECTS_SHOWN = 1000  # the Prefect UI lists this many rejected items; rejects.jsonl has them all


def publish_ingest_report(report: dict, paths: ProjectPaths) -> None:
    """The ingest report as Prefect table artifacts: the counts by outcome, and the rejected items."""
    ingested = paths.ingested
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


def publish_evaluation_report(result: dict, paths: ProjectPaths) -> None:
    """The evaluated model's report.md as a Prefect markdown artifact (its pictures are beside it, and in
    the model's MLflow run)."""
    report = paths.eval / EVAL_REPORT
    if report.is_file():
        create_markdown_artifact(report.read_text(), key="evaluation-report", description=f"{report}")


# A stage's `publishes` (tasks/graph.py): the Prefect artifact made of its output.
PUBLISHERS = {"ingest_report": publish_ingest_report, "evaluation_report": publish_evaluation_report}


def make_stage_flow(stage: Stage):
    @flow(name=stage.name, log_prints=True)
    def stage_flow(cfg: Config, root: str = ".", parent_run_id: str | None = None) -> dict:
        paths = ProjectPaths.at(root)
        if stage.maps:
            result = run_stage(stage.name, cfg, paths, parent_run_id, **{stage.maps: MAPS[stage.maps]})
        else:
            retried = stage_task.with_options(
                name=stage.name, retries=stage.retries, retry_delay_seconds=[2, 10]
            )
            result = retried(stage.name, cfg, root, parent_run_id)
        if stage.publishes:
            PUBLISHERS[stage.publishes](result, paths)
        return result

    stage_flow.__doc__ = f"The {stage.name} stage."
    return stage_flow


STAGE_FLOWS = {name: make_stage_flow(stage) for name, stage in STAGES.items()}
