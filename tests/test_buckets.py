"""Aspect-ratio buckets: equal-area targets, each image in its nearest bucket, and every later stage
(VAE training, latent cache, U-Net training) working on bucketed data."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.cache_latents import run_cache_latents
from tasks.common.config import config_from_dict
from tasks.common.ingested import image_groups, read_ingested
from tasks.embed_text import run_embed_text
from tasks.ingest.preprocess import aspect_buckets, nearest_bucket
from tasks.ingest.stage import run_ingest
from tasks.train_unet.loop import run_train_unet
from tasks.train_vae import run_train_vae


@pytest.mark.parametrize("resolution, step, max_ratio", [(32, 8, 2.0), (512, 64, 2.0), (1024, 64, 1.5)])
def test_buckets_are_equal_area_multiples_of_step_and_bounded(resolution, step, max_ratio):
    buckets = aspect_buckets(resolution, step, max_ratio)
    assert (resolution, resolution) in buckets
    for w, h in buckets:
        assert w % step == 0 and h % step == 0
        assert w * h <= resolution**2 < w * (h + step)  # the tallest bucket of that width that fits the area
        assert max(w / h, h / w) <= max_ratio
    ratios = [w / h for w, h in buckets]
    assert ratios == sorted(ratios) and len(set(ratios)) == len(ratios)


def test_nearest_bucket_compares_aspect_ratios_in_log_space():
    buckets = aspect_buckets(32, 8, 2.0)
    assert buckets == ((24, 40), (32, 32), (40, 24))
    assert nearest_bucket((300, 100), buckets) == (40, 24)  # 3:1 -> the widest
    assert nearest_bucket((100, 300), buckets) == (24, 40)
    assert nearest_bucket((105, 100), buckets) == (32, 32)
    assert nearest_bucket((130, 100), buckets) == (40, 24)  # |log 1.3 - log 5/3| = 0.25 < |log 1.3| = 0.26
    assert nearest_bucket((125, 100), buckets) == (32, 32)  # |log 1.25 - log 5/3| = 0.29 > |log 1.25| = 0.22


def make_mixed_folder(root, per_shape=8):
    """Sidecar images: wide (3:1), tall (1:3) and square, with captions naming their shape."""
    root.mkdir()
    shapes = {"wide": (90, 30), "tall": (30, 90), "square": (40, 40)}
    for i in range(per_shape):
        for name, size in shapes.items():
            pixels = np.full((size[1], size[0], 3), (30 * i % 255, 90, 200 - 20 * i), np.uint8)
            pixels[size[1] // 3 :, : size[0] // 2] = 255  # some structure for the VAE
            Image.fromarray(pixels).save(root / f"{name}{i}.png")
            (root / f"{name}{i}.txt").write_text(f"a {name} picture, number {i}")


def bucket_cfg(root, store=None):
    return config_from_dict(
        {
            "data": {"source": "sidecar", "path": str(root), "resolution": 32, "val_fraction": 0.2,
                     "shard_size": 5, "buckets": {"enabled": True, "step": 8, "max_ratio": 2.0}},
            "vae": {"block_out_channels": [8, 16], "norm_num_groups": 4, "steps": 3, "batch_size": 4},
            "latents": {"shard_size": 4},
            "text": {"max_length": 8, "shard_size": 16},
            "unet": {"block_out_channels": [16, 32], "attention_head_dim": 4, "steps": 3, "batch_size": 4,
                     "warmup_steps": 1, "num_train_timesteps": 50},
            "storage": {"bucket": store.bucket if store else "ldmflow"},
        }
    )  # fmt: skip


def test_ingest_puts_each_image_in_its_nearest_bucket(tmp_path):
    make_mixed_folder(tmp_path / "src")
    report = run_ingest(bucket_cfg(tmp_path / "src"), tmp_path / "out")
    assert report["accepted"] == 24
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    expected = {"wide": "40x24", "tall": "24x40", "square": "32x32"}
    for row in manifest.itertuples():
        assert row.bucket == expected[row.sample_id.rstrip("0123456789.png")]
        assert row.bucket == f"{row.width}x{row.height}" and row.shard.startswith(f"images-{row.bucket}-")
    assert manifest.groupby("shard")["index"].max().max() == 4  # shards of 5, one size each

    groups = [(rows, images[:]) for rows, images in image_groups(tmp_path / "out")]
    assert [images.shape for _, images in groups] == [(8, 24, 40, 3), (8, 32, 32, 3), (8, 40, 24, 3)]
    for rows, images in groups:  # rows keep their manifest index: the images line up with them
        assert list(rows["sha256"]) == [hashlib.sha256(image.tobytes()).hexdigest() for image in images]
    with pytest.raises(ValueError, match="several sizes.*image_groups"):
        read_ingested(tmp_path / "out")


def test_bucketed_data_trains_the_vae_caches_latents_and_trains_the_unet(tmp_path, object_store):
    make_mixed_folder(tmp_path / "src")
    cfg = bucket_cfg(tmp_path / "src", object_store)
    run_ingest(cfg, tmp_path / "ingested")
    vae_metrics = run_train_vae(cfg, tmp_path / "ingested", tmp_path / "vae")
    assert math.isfinite(vae_metrics["val_psnr"])

    info = run_cache_latents(cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "latents", object_store)
    assert info["latent_shapes"] == {"24x40": [4, 20, 12], "32x32": [4, 16, 16], "40x24": [4, 12, 20]}
    latents = pd.read_parquet(tmp_path / "latents" / "manifest.parquet")
    ingested = pd.read_parquet(tmp_path / "ingested" / "manifest.parquet")
    assert list(latents["sample_id"]) == list(ingested["sample_id"])  # back in manifest order
    shard_buckets = latents.groupby("shard")["bucket"].nunique()
    assert (shard_buckets == 1).all()  # a latent shard never mixes shapes

    run_embed_text(cfg, tmp_path / "ingested", tmp_path / "text", object_store)
    unet_metrics = run_train_unet(
        cfg, tmp_path / "latents", tmp_path / "text", tmp_path / "unet", object_store
    )
    assert math.isfinite(unet_metrics["final_train_loss"])
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["sample_size"] == 16  # the square
