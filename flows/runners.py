"""Where mapped tasks run: the Prefect task runner named by `orchestration` in params."""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.common.config import OrchestrationConfig
from tasks.common.parallel import available_cores


def task_runner(orchestration: OrchestrationConfig) -> TaskRunner:
    """Threads in this process (the default), or Dask: a scheduler's address, else a LocalCluster of
    worker processes bound to 127.0.0.1."""
    workers = orchestration.workers or available_cores()
    if orchestration.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if orchestration.dask_address:
        return DaskTaskRunner(address=orchestration.dask_address)
    cluster = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
               "dashboard_address": "127.0.0.1:0"}  # fmt: skip
    return DaskTaskRunner(cluster_kwargs=cluster)
