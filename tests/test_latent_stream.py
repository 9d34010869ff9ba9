"""Training batches streamed from the latent cache: planned per (seed, epoch), resumable at an exact
batch, prefetched into a bounded local folder, and equal to the cached tensors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_caches import save_tiny_vae

from tasks.cache_latents import run_cache_latents
from tasks.common.config import config_from_dict
from tasks.common.content_cache import gather
from tasks.ingest.stage import run_ingest
from tasks.train_unet.latent_stream import LatentStream, plan_epoch


def table(shards=6, per_shard=10, buckets=("32x32",)):
    rows = [
        {"shard": f"s{s}", "shard_index": i, "bucket": buckets[s % len(buckets)]}
        for s in range(shards)
        for i in range(per_shard)
    ]
    return pd.DataFrame(rows)


def test_an_epoch_plan_is_seeded_shuffled_across_shards_and_never_repeats_a_sample():
    items = table()
    plan = plan_epoch(items, batch_size=8, seed=0, epoch=0, window=3)
    again = plan_epoch(items, batch_size=8, seed=0, epoch=0, window=3)
    assert all(np.array_equal(a, b) for a, b in zip(plan, again, strict=True))
    rows = np.concatenate(plan)
    assert len(rows) == len(set(rows.tolist())) == 56  # 60 samples, 7 full batches, none twice
    assert any(items["shard"].iloc[b].nunique() > 1 for b in plan)  # batches mix shards
    next_epoch = plan_epoch(items, batch_size=8, seed=0, epoch=1, window=3)
    assert not all(np.array_equal(a, b) for a, b in zip(plan, next_epoch, strict=False))
    other_seed = plan_epoch(items, batch_size=8, seed=1, epoch=0, window=3)
    assert not all(np.array_equal(a, b) for a, b in zip(plan, other_seed, strict=False))


def test_every_batch_holds_one_bucket():
    items = table(shards=8, buckets=("24x40", "32x32", "40x24"))
    plan = plan_epoch(items, batch_size=4, seed=3, epoch=0, window=4)
    assert all(items["bucket"].iloc[b].nunique() == 1 for b in plan)
    assert len(np.concatenate(plan)) >= 80 - 3 * 3  # at most one partial batch per bucket left over


@pytest.fixture
def cached_latents(tmp_path, object_store):
    cfg = config_from_dict(
        {"data": {"resolution": 16, "shard_size": 64, "synthetic": {"count": 60}},
         "latents": {"shard_size": 8}, "storage": {"bucket": object_store.bucket}}
    )  # fmt: skip
    save_tiny_vae(tmp_path / "vae", seed=0)
    run_ingest(cfg, tmp_path / "ingested")
    run_cache_latents(cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "latents", object_store)
    return pd.read_parquet(tmp_path / "latents" / "manifest.parquet")


def test_streamed_batches_equal_the_cached_latents_and_resume_exactly(tmp_path, object_store, cached_latents):
    items = cached_latents
    stream = LatentStream(
        object_store, items, batch_size=5, seed=7, folder=tmp_path / "a", window=2, prefetch=2
    )
    steps = len(stream.plan(0)) + 4  # into the second epoch
    run = [next(it) for it in [stream.batches()] for _ in range(steps)]
    for batch, tensors in run[:3]:
        rows = items.iloc[batch.rows]
        expected = gather(object_store, list(rows["shard"]), list(rows["shard_sha256"]),
                          list(rows["shard_index"]), "mean")  # fmt: skip
        assert torch.equal(tensors["mean"], expected) and tensors["std"].shape == expected.shape

    k = len(stream.plan(0)) - 2  # resume two batches before the epoch ends, in a fresh stream and folder
    resumed = LatentStream(
        object_store, items, batch_size=5, seed=7, folder=tmp_path / "b", window=2, prefetch=2
    )
    tail = resumed.batches(epoch=0, start=k)
    for batch, tensors in run[k:]:
        again, again_tensors = next(tail)
        assert (again.epoch, again.index) == (batch.epoch, batch.index)
        assert np.array_equal(again.rows, batch.rows) and torch.equal(again_tensors["mean"], tensors["mean"])
    epoch0 = np.concatenate([b.rows for b, _ in run if b.epoch == 0])
    assert len(epoch0) == len(set(epoch0.tolist()))  # no sample twice within an epoch


def test_the_local_shard_folder_stays_within_its_size(tmp_path, object_store, cached_latents):
    one_shard = max(object_store.head(s)["size"] for s in set(cached_latents["shard"]))
    stream = LatentStream(object_store, cached_latents, batch_size=4, seed=0, folder=tmp_path / "small",
                          max_bytes=3 * one_shard, window=1, prefetch=1)  # fmt: skip
    batches = stream.batches()
    for _ in range(3 * len(stream.plan(0))):  # three epochs over 8 shards through room for 3
        next(batches)
        assert folder_bytes(tmp_path / "small") <= 5 * one_shard  # prefetcher and trainer may each add one
    batches.close()  # the prefetcher stops: the folder is back within its size
    assert folder_bytes(tmp_path / "small") <= 3 * one_shard


def folder_bytes(folder) -> int:
    total = 0
    for path in folder.glob("*.safetensors"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # evicted while we looked
            pass
    return total
