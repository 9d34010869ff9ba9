"""cache_latents stage: encode every ingested image with the trained VAE into S3 latent shards.

A latent's key hashes the preprocessed pixels, the VAE weights' fingerprint and the image size, so a
changed VAE never serves a stale latent. Each image size (aspect-ratio bucket) has shards of its own.
Shards hold the posterior `mean` and `std` (float16): training draws a fresh latent each step and
normalises it (the VAE's statistics) at use time.
Writes `artifacts/latents/manifest.parquet` and `artifacts/latents/cache.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from diffusers import AutoencoderKL

from models.device import pick_device
from models.fingerprint import module_fingerprint
from models.images import to_model_space
from tasks.cache import CacheStats, build_cache, previous_refs, ref_columns
from tasks.config import Config
from tasks.ingest import read_buckets
from tasks.keys import content_key
from tasks.storage import ObjectStore
from tasks.tracking import Run

MANIFEST = "manifest.parquet"
NORMALISATION_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")
INFO = "cache.json"


def latent_keys(pixel_sha256: list[str], vae_fingerprint: str, preprocessing: dict) -> list[str]:
    return [content_key(sha, vae_fingerprint, preprocessing) for sha in pixel_sha256]


def run_cache_latents(
    cfg: Config, ingested: Path, vae_dir: Path, out: Path, store: ObjectStore, tracker: Run | None = None
) -> dict:
    device = pick_device()
    vae = AutoencoderKL.from_pretrained(vae_dir).to(device).eval()
    fingerprint = module_fingerprint(vae)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    stats = CacheStats()
    previous = previous_refs(out / MANIFEST, "latent_key")  # what the last build stored, kept if intact
    parts, shapes = [], {}
    # one pass per image size (aspect-ratio bucket), so every latent shard holds latents of one shape
    for manifest, images in read_buckets(ingested):
        height, width = images.shape[1:3]
        if height % factor or width % factor:
            raise ValueError(
                f"{ingested}: images of {width}x{height} do not divide by the VAE's factor {factor}"
            )
        # the stored pixels are already resized and cropped as ingest was told (their sha256 is in the key)
        keys = latent_keys(manifest["sha256"].tolist(), fingerprint, {"height": height, "width": width})

        @torch.no_grad()
        def encode(indices: list[int], images=images) -> dict[str, torch.Tensor]:
            posterior = vae.encode(to_model_space(images[indices]).to(device)).latent_dist
            return {"mean": posterior.mean.half().cpu(), "std": posterior.std.half().cpu()}

        bucket = manifest["bucket"].iloc[0]
        group = build_cache(
            store, "latents", keys, cfg.latents.shard_size, encode, f"cache_latents {bucket}", previous
        )
        stats.merge(group)
        shapes[bucket] = [int(vae.config.latent_channels), height // factor, width // factor]
        parts.append(
            pd.DataFrame(
                {
                    "sample_id": manifest["sample_id"],
                    "split": manifest["split"],
                    "caption": manifest["caption"],
                    "bucket": bucket,
                    "latent_key": keys,
                    **ref_columns(group.refs),
                },
                index=manifest.index,
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    latents = pd.concat(parts).sort_index()  # back in the ingest manifest's order
    latents.to_parquet(out / MANIFEST, index=False)
    info = {
        "vae_fingerprint": fingerprint,
        "normalisation": {k: vae.config.get(k) for k in NORMALISATION_KEYS},
        "latent_shapes": shapes,  # bucket -> [C, h, w]
        "bucket": store.bucket,
        "samples": len(latents),
        **stats.summary(),
    }
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n")
    if tracker:
        tracker.log_metrics({k: v for k, v in stats.summary().items()})
    return info
