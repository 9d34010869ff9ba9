"""Where mapped tasks run: the Prefect task runner named by `orchestration` in params."""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from infra.parallel import available_cores
from tasks.common.config import OrchestrationConfig


def task_runner(orchestration: OrchestrationConfig) -> TaskRunner:
    """Threads in this process (the default), or Dask: a scheduler's address, else a LocalCluster of
    worker processes bound to 127.0.0.1.

    A Dask scheduler runs whatever code it is sent: an open one on 127.0.0.1 would run anyone's code on
    the host as this user. The LocalCluster talks mutual TLS with certificates made for it alone (Dask's
    `Security.temporary`). Its HTTP servers (which Dask starts even without a dashboard) serve no pages:
    they would show every task to anyone on the host."""
    workers = orchestration.workers or available_cores()
    if orchestration.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    import dask
    from prefect_dask import DaskTaskRunner

    if orchestration.dask_address:
        return DaskTaskRunner(address=orchestration.dask_address)
    cluster = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
               "security": True, "dashboard_address": None}  # fmt: skip
    # read when the cluster starts (in this process; its workers get this config from their nannies)
    dask.config.set({"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []})
    return DaskTaskRunner(cluster_kwargs=cluster)
