"""Run one stage of tasks/graph.py inside its MLflow run.

The Prefect flows (`flows/`) and DVC's stage commands (`ldmflow stage NAME`) both call `run_stage`, so
`ldmflow run` and `dvc repro` execute the same code and leave the same outputs.
"""

from __future__ import annotations

import gc
import importlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from infra import launch
from tasks.common.config import Config
from tasks.common.paths import ProjectPaths
from tasks.graph import STAGES

WORK_METRIC = "stage_work_seconds"  # the stage's own work, without its MLflow run's bookkeeping


@contextmanager
def heap_frozen() -> Iterator[None]:
    """Exempt every object alive now from the garbage collector's full passes until the block ends
    (`gc.freeze`). Most of them are the libraries imported so far: in a process holding torch, Prefect and
    MLflow, a full pass walks over half a million objects and takes about 0.3 s. Python starts one whenever
    enough new objects have survived, so a stage that builds tens of thousands of rows paid one or two, at
    points that depended on what ran before it. Inside the block a full pass walks only the stage's own
    objects; after it, the frozen objects are collectable again (a cycle among them is freed later, not
    kept)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_stage(
    name: str,
    cfg: Config,
    paths: ProjectPaths,
    parent_run_id: str | None = None,
    **options,
) -> dict:
    """Run one stage inside its own MLflow run (nested under the pipeline run when there is one).

    `options` go to the stage's `main`: Prefect flows pass the maps that run a stage's many jobs as tasks
    on the configured task runner (`map_shards` for the caches, `map_decode` for ingest); without them the
    jobs run here.
    """
    from infra.tracking import stage_run

    stage = STAGES[name]
    main = importlib.import_module(stage.entry).main
    if launch.launched_distributed():  # torchrun / accelerate launch: every process runs this
        if not stage.distributed:
            distributed = [s.name for s in STAGES.values() if s.distributed]
            raise ValueError(f"only {', '.join(distributed)} runs on several processes, not {name}")
        if launch.rank() != 0:  # the main process alone logs to MLflow
            with heap_frozen():
                return main(cfg, paths, None)
    with stage_run(cfg, paths, name, stage.params, parent_run_id) as run:
        start = time.perf_counter()
        with heap_frozen():
            result = main(cfg, paths, run, **options)
        run.log_metrics({WORK_METRIC: time.perf_counter() - start})  # benchmarks/overhead.py reads it
        return result
