"""The caches in object storage are never stale, never corrupt, and grow by what is new: against the
real S3 server, with real tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from PIL import Image
from test_caches import save_tiny_vae

from tasks.cache_latents import run_cache_latents
from tasks.common.cache_shards import CorruptShard
from tasks.common.config import config_from_dict
from tasks.common.content_cache import gather
from tasks.embed_text import run_embed_text
from tasks.ingest.stage import run_ingest
from tasks.train_unet.latent_stream import LatentStream


def synthetic_cfg(store, count, shard_size=10):
    return config_from_dict(
        {
            "data": {"resolution": 16, "shard_size": 64, "synthetic": {"count": count}},
            "latents": {"shard_size": shard_size},
            "text": {"max_length": 8, "shard_size": shard_size},
            "storage": {"bucket": store.bucket},
        }
    )


def stored_shards(store, kind):
    return set(store.list_keys(store.key(kind) + "/"))


def test_adding_one_percent_new_images_encodes_only_those(tmp_path, object_store):
    save_tiny_vae(tmp_path / "vae", seed=0)
    before = synthetic_cfg(object_store, count=200)
    run_ingest(before, tmp_path / "ingested")
    first = run_cache_latents(
        before, tmp_path / "ingested", tmp_path / "vae", tmp_path / "latents", object_store
    )
    text_first = run_embed_text(before, tmp_path / "ingested", tmp_path / "text", object_store)
    assert first["items_computed"] == 200
    old_captions = set(pd.read_parquet(tmp_path / "text" / "manifest.parquet")["caption"])

    after = synthetic_cfg(object_store, count=202)  # the synthetic set is deterministic: 2 new samples
    run_ingest(after, tmp_path / "ingested")
    again = run_cache_latents(
        after, tmp_path / "ingested", tmp_path / "vae", tmp_path / "latents", object_store
    )
    assert again["items_computed"] == 2 and again["items_reused"] == 200 and again["shards_healed"] == 0
    text_again = run_embed_text(after, tmp_path / "ingested", tmp_path / "text", object_store)
    new_captions = set(pd.read_parquet(tmp_path / "text" / "manifest.parquet")["caption"]) - old_captions
    assert text_again["items_computed"] == len(new_captions)
    assert text_again["items_reused"] == text_first["captions"]

    latents = pd.read_parquet(tmp_path / "latents" / "manifest.parquet")
    assert len(latents) == 202 and latents["latent_key"].is_unique
    assert set(latents["shard"]) == stored_shards(object_store, "latents")  # nothing orphaned or twice


def test_changing_one_caption_changes_exactly_one_text_key(tmp_path, object_store):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        Image.new("RGB", (20, 20), (50 * i, 0, 0)).save(src / f"{i}.png")
        (src / f"{i}.txt").write_text(f"caption number {i}")
    cfg = config_from_dict(
        {"data": {"source": "sidecar", "path": str(src), "resolution": 16},
         "text": {"max_length": 8}, "storage": {"bucket": object_store.bucket}}
    )  # fmt: skip
    run_ingest(cfg, tmp_path / "ingested")
    run_embed_text(cfg, tmp_path / "ingested", tmp_path / "text", object_store)
    keys_before = set(pd.read_parquet(tmp_path / "text" / "manifest.parquet")["text_key"])

    (src / "3.txt").write_text("a caption that was edited")
    run_ingest(cfg, tmp_path / "ingested")
    info = run_embed_text(cfg, tmp_path / "ingested", tmp_path / "text", object_store)
    keys_after = set(pd.read_parquet(tmp_path / "text" / "manifest.parquet")["text_key"])
    assert len(keys_before - keys_after) == 1 and len(keys_after - keys_before) == 1
    assert info["items_computed"] == 1


def test_a_flipped_byte_is_detected_on_read_and_healed_on_the_next_run(tmp_path, object_store):
    cfg = synthetic_cfg(object_store, count=40)
    save_tiny_vae(tmp_path / "vae", seed=0)
    run_ingest(cfg, tmp_path / "ingested")
    run_cache_latents(cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "latents", object_store)
    manifest = pd.read_parquet(tmp_path / "latents" / "manifest.parquet")
    victim = manifest["shard"].iloc[0]
    head = object_store.head(victim)
    data = bytearray(object_store.get_bytes(victim))
    data[len(data) // 2] ^= 0x01  # one bit, deep in the tensor data: still valid safetensors
    object_store.put_bytes(victim, bytes(data), metadata=head["metadata"])  # same recorded checksum

    rows = manifest[manifest["shard"] == victim]
    with pytest.raises(CorruptShard, match="checksum mismatch"):  # never trained on
        gather(
            object_store, list(rows["shard"]), list(rows["shard_sha256"]), list(rows["shard_index"]), "mean"
        )

    stream = LatentStream(object_store, rows, batch_size=1, seed=0, folder=tmp_path / "shard-cache")
    with pytest.raises(CorruptShard, match="ldmflow run cache_latents --force"):  # the trainer refuses it
        next(stream.batches())

    healed = run_cache_latents(
        cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "latents", object_store
    )
    assert healed["shards_healed"] == 1 and healed["items_computed"] == len(rows)
    after = pd.read_parquet(tmp_path / "latents" / "manifest.parquet")
    for shard, sha in dict(zip(after["shard"], after["shard_sha256"], strict=True)).items():
        gather(object_store, [shard], [sha], [0], "mean")  # every shard verifies


KILL_AFTER_PUTS = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from infra import storage
    from tasks.cache_latents import run_cache_latents
    from tasks.common.config import config_from_dict

    put, done = storage.ObjectStore.put_bytes, []
    def put_then_maybe_die(self, *args, **kwargs):
        etag = put(self, *args, **kwargs)
        done.append(etag)
        if len(done) == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9`: no cleanup, no manifest
        return etag
    storage.ObjectStore.put_bytes = put_then_maybe_die

    cfg = config_from_dict(json.loads(sys.argv[1]))
    store = storage.ObjectStore(sys.argv[2], cfg.storage.bucket, cfg.storage.prefix)
    root = Path(sys.argv[3])
    run_cache_latents(cfg, root / "ingested", root / "vae", root / "latents", store)
    """
)


@pytest.mark.faults
def test_a_cache_stage_killed_midway_reruns_to_every_shard_valid_and_none_twice(
    tmp_path, object_store, s3_server, fault
):
    cfg = synthetic_cfg(object_store, count=60)
    save_tiny_vae(tmp_path / "vae", seed=0)
    run_ingest(cfg, tmp_path / "ingested")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    raw = cfg.model_dump(mode="json")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_PUTS, json.dumps(raw), s3_server.endpoint_url, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    assert len(stored_shards(object_store, "latents")) == 3
    assert not (tmp_path / "latents" / "manifest.parquet").exists()

    rerun = run_cache_latents(
        cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "latents", object_store
    )
    assert rerun["shard_hits"] == 3 and rerun["shard_misses"] == 3 and rerun["items_computed"] == 30
    manifest = pd.read_parquet(tmp_path / "latents" / "manifest.parquet")
    assert set(manifest["shard"]) == stored_shards(object_store, "latents")  # 6 shards, none twice
    fault("kill -9 in cache_latents after 3 of 6 shards", "recovered: the rerun reused 3, wrote 3")
    for shard, sha in dict(zip(manifest["shard"], manifest["shard_sha256"], strict=True)).items():
        gather(object_store, [shard], [sha], [0], "mean")
