"""cache_latents stage: encode every ingested image with the trained VAE into S3 latent shards.

A latent's key hashes the preprocessed pixels, the VAE weights' fingerprint and the image size, so a
changed VAE never serves a stale latent. Each image size (aspect-ratio bucket) has shards of its own.
Shards hold the posterior `mean` and `std` (float16), and with `latents.flip` those of each image's mirror
too (`mean_flip`, `std_flip`): training picks one of the two, may draw a fresh latent each step, and
normalises it (the VAE's statistics) at use time.
Writes `artifacts/latents/manifest.parquet` and `artifacts/latents/cache.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from diffusers import AutoencoderKL

from infra.storage import ObjectStore, object_store_from_config
from infra.tracking import Run
from models.fingerprint import module_fingerprint
from models.sampler.device import pick_device
from models.sampler.images import to_model_space
from models.sampler.latents import posterior_fp16
from tasks.common.atomic_dir import recover, replaced_dir
from tasks.common.config import Config
from tasks.common.content_cache import (
    CacheStats,
    ModelInProcess,
    ShardMap,
    build_cache,
    previous_refs,
    ref_columns,
    store_shards_here,
)
from tasks.common.ingested import ImageShards
from tasks.common.keys import content_keys
from tasks.common.paths import CACHE_INFO, MANIFEST, ProjectPaths

NORMALISATION_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")
# what the stage reads of the ingest manifest
MANIFEST_INPUTS = ["sample_id", "split", "caption", "bucket", "sha256", "shard", "index", "height", "width"]


# What a latent shard stores of an image (posterior mean and std in float16, and the mirror's with flip):
# part of every key, so a change to it is bumped here and never reuses an old shard.
LATENT_FORMAT = 2


def latent_keys(pixel_sha256: list[str], vae_fingerprint: str, preprocessing: dict) -> list[str]:
    return content_keys(pixel_sha256, vae_fingerprint, {"format": LATENT_FORMAT, **preprocessing})


def load_vae(vae_dir: str) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(vae_dir).to(pick_device()).eval()


VAES = ModelInProcess(load_vae, weights=lambda vae: vae)


@dataclass(frozen=True)
class LatentEncoder:
    """Posterior mean and std of stored images. Picklable: it reads the VAE and the images from paths."""

    vae_dir: str
    vae_fingerprint: str
    ingested: str
    batch_size: int  # images per VAE forward
    flip: bool = False  # also `mean_flip` / `std_flip`: the posterior of each image's mirror

    @torch.no_grad()
    def __call__(self, rows: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        vae = VAES.get(self.vae_dir, self.vae_fingerprint)
        images = ImageShards(Path(self.ingested)).images(rows)  # uint8 [N, H, W, 3]
        device = next(vae.parameters()).device  # (diffusers' `vae.device` walks every module)
        parts = []
        for start in range(0, len(rows), self.batch_size):
            pixels = to_model_space(images[start : start + self.batch_size]).to(device)  # [n, 3, H, W]
            parts.append(posterior_fp16(vae, pixels, self.flip))
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def run_cache_latents(
    cfg: Config,
    ingested: Path,
    vae_dir: Path,
    out: Path,
    store: ObjectStore,
    tracker: Run | None = None,
    map_shards: ShardMap = store_shards_here,
) -> dict:
    vae = load_vae(str(vae_dir))
    fingerprint = module_fingerprint(vae)
    VAES.keep(str(vae_dir), fingerprint, vae)  # shard jobs in this process use this one
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    encoder = LatentEncoder(
        str(vae_dir), fingerprint, str(ingested), cfg.latents.encode_batch_size, cfg.latents.flip
    )
    manifest = pd.read_parquet(ingested / MANIFEST, columns=MANIFEST_INPUTS)
    stats = CacheStats()
    recover(out)  # a build killed mid-swap
    previous = previous_refs(out / MANIFEST, "latent_key")  # what the last build stored, kept if intact
    parts, shapes = [], {}
    # one pass per image size (aspect-ratio bucket), so every latent shard holds latents of one shape
    for (height, width), rows in manifest.groupby(["height", "width"], sort=True):
        if height % factor or width % factor:
            raise ValueError(
                f"{ingested}: images of {width}x{height} do not divide by the VAE's factor {factor}"
            )
        bucket = rows["bucket"].iloc[0]
        # the stored pixels are already resized and cropped as ingest was told (their sha256 is in the key)
        preprocessing = {"height": int(height), "width": int(width), "flip": cfg.latents.flip}
        keys = latent_keys(rows["sha256"].tolist(), fingerprint, preprocessing)
        inputs = list(zip(rows["shard"], rows["index"].astype(int), strict=True))
        group = build_cache(
            store, "latents", keys, inputs, cfg.latents.shard_size, encoder, f"cache_latents {bucket}",
            previous, map_shards,
        )  # fmt: skip
        stats.merge(group)
        shapes[bucket] = [int(vae.config.latent_channels), int(height) // factor, int(width) // factor]
        columns = {"sample_id": rows["sample_id"], "split": rows["split"], "caption": rows["caption"],
                   "bucket": bucket, "latent_key": keys, **ref_columns(group.refs)}  # fmt: skip
        parts.append(pd.DataFrame(columns, index=rows.index))
    latents = pd.concat(parts).sort_index()  # back in the ingest manifest's order
    info = {
        "vae_fingerprint": fingerprint,
        "normalisation": {k: vae.config.get(k) for k in NORMALISATION_KEYS},
        "latent_shapes": shapes,  # bucket -> [C, h, w]
        "flip": cfg.latents.flip,
        "bucket": store.bucket,
        "samples": len(latents),
        **stats.summary(),
    }
    with replaced_dir(out) as staging:  # the manifest and its info appear together or not at all
        latents.to_parquet(staging / MANIFEST, index=False)
        (staging / CACHE_INFO).write_text(json.dumps(info, indent=2) + "\n")
    if tracker:
        tracker.log_metrics({k: v for k, v in stats.summary().items()})
    return info


def main(cfg: Config, paths: ProjectPaths, tracker: Run, map_shards: ShardMap = store_shards_here) -> dict:
    store = object_store_from_config(cfg.storage, paths.s3_state)
    try:
        return run_cache_latents(cfg, paths.ingested, paths.vae, paths.latents, store, tracker, map_shards)
    finally:
        VAES.release()  # the next stages need the device's memory
