"""Run one stage of tasks/graph.py inside its MLflow run.

The Prefect flows (`flows/`) and DVC's stage commands (`ldmflow stage NAME`) both call `run_stage`, so
`ldmflow run` and `dvc repro` execute the same code and leave the same outputs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tasks.common import launch
from tasks.common.config import Config
from tasks.common.paths import ProjectPaths
from tasks.graph import DISTRIBUTED, STAGES

if TYPE_CHECKING:  # MLflow and torch take seconds to import: the CLI imports this
    from tasks.common.content_cache import ShardMap


def run_stage(
    name: str,
    cfg: Config,
    paths: ProjectPaths,
    parent_run_id: str | None = None,
    map_shards: ShardMap | None = None,
) -> dict:
    """Run one stage inside its own MLflow run (nested under the pipeline run when there is one).

    `map_shards` runs a sharded stage's shard jobs (default: one after another, here); Prefect flows pass
    one that maps them as tasks over the configured task runner.
    """
    from tasks.common.tracking import stage_run

    stage = STAGES[name]
    main = importlib.import_module(stage.entry).main
    options = {"map_shards": map_shards} if map_shards is not None else {}
    if launch.launched_distributed():  # torchrun / accelerate launch: every process runs this
        if name not in DISTRIBUTED:
            raise ValueError(f"only {', '.join(DISTRIBUTED)} runs on several processes, not {name}")
        if launch.rank() != 0:  # the main process alone logs to MLflow
            return main(cfg, paths, None)
    with stage_run(cfg, paths, name, stage.params, parent_run_id) as run:
        return main(cfg, paths, run, **options)
