"""The cache stage flows map their shard jobs as Prefect tasks: threads and Dask worker processes store
the same cache, and the flow run gets a progress artifact only when the store lasts long enough to watch."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from test_caches import save_tiny_vae

from flows.runners import task_runner
from flows.stage_flows import STAGE_FLOWS
from tasks.cache_latents import VAES
from tasks.common.config import config_from_dict
from tasks.common.content_cache import ShardJob
from tasks.common.paths import ProjectPaths
from tasks.ingest.stage import run_ingest


def test_dask_workers_store_the_same_latent_cache_as_threads(
    tmp_path, object_store, s3_server, monkeypatch, prefect_server
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)  # Dask workers inherit these
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.chdir(tmp_path)
    paths = ProjectPaths.at(tmp_path / "project")
    raw = {
        "data": {"resolution": 16, "shard_size": 64, "synthetic": {"count": 48}},
        "latents": {"shard_size": 8},
        "storage": {"endpoint_url": s3_server.endpoint_url, "bucket": object_store.bucket, "prefix": "cache"},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "orchestration": {"task_runner": "threads", "workers": 2},
    }
    threads_cfg = config_from_dict(raw)
    run_ingest(threads_cfg, paths.ingested)
    save_tiny_vae(paths.vae, seed=0)
    cache_flow = STAGE_FLOWS["cache_latents"]

    threads = cache_flow.with_options(task_runner=task_runner(threads_cfg.orchestration))(
        threads_cfg, str(paths.root)
    )
    by_threads = pd.read_parquet(paths.latents / "manifest.parquet")
    assert VAES._held is None  # the stage let its VAE go: the next stages need the device's memory
    for key in object_store.list_keys("cache/"):  # start again from nothing: every shard computed anew
        object_store.delete(key)
    shutil.rmtree(paths.latents)

    dask_cfg = config_from_dict({**raw, "orchestration": {"task_runner": "dask", "workers": 2}})
    dask = cache_flow.with_options(task_runner=task_runner(dask_cfg.orchestration))(dask_cfg, str(paths.root))
    by_dask = pd.read_parquet(paths.latents / "manifest.parquet")
    assert threads["shard_misses"] == dask["shard_misses"] == 6 and dask["shard_hits"] == 0
    assert by_dask.equals(by_threads)  # same keys, shards, checksums and ETags


def squares(inputs: list[int]) -> dict[str, torch.Tensor]:
    return {"x": torch.tensor(inputs) ** 2}


@pytest.mark.parametrize(("after", "progress"), [(0.0, [100.0]), (3600.0, [])])
def test_shards_stored_with_a_progress_artifact_only_past_the_delay(
    object_store, prefect_server, monkeypatch, after, progress
):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.runtime import flow_run

    import flows.stage_flows as stage_flows

    monkeypatch.setattr(stage_flows, "PROGRESS_AFTER_SECONDS", after)
    jobs = [
        ShardJob(object_store, object_store.key("t", f"{i}.safetensors"), [f"k{i}"], [i], squares)
        for i in range(3)
    ]

    @flow
    def store_all():
        return flow_run.get_id(), stage_flows.store_shards_with_prefect(jobs, "squares")

    run_id, results = store_all()
    assert [(r.name, r.found) for r in results] == [(job.name, False) for job in jobs]
    assert all(object_store.exists(job.name) for job in jobs)
    with get_client(sync_client=True) as client:
        made = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    assert [a.data for a in made if a.type == "progress"] == progress
