"""train_vae stage: fit a diffusers AutoencoderKL on the ingested train split.

Writes `artifacts/vae/` (the diffusers model dir, whose config holds the latent statistics estimated
on the train split: per-channel `latents_mean`/`latents_std`, or SD's global `scaling_factor` = 1/std;
see models/latents.py) and `artifacts/vae/metrics.json` (validation PSNR among others).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from models.device import autocast, pick_device
from models.images import to_model_space, to_uint8
from models.latents import set_normalisation
from models.pipeline import make_grid
from models.vae import build_vae, psnr, vae_loss
from tasks.config import Config
from tasks.ingest import read_ingested
from tasks.progress import progress
from tasks.tracking import Run

METRICS = "metrics.json"


def batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def run_train_vae(cfg: Config, ingested: Path, out: Path, tracker: Run | None = None) -> dict:
    """Train the VAE, set its scaling factor, save it to `out`; return the metrics."""
    v = cfg.vae
    torch.manual_seed(cfg.seed)
    device = pick_device()
    _, train_images = read_ingested(ingested, "train")
    try:
        _, val_images = read_ingested(ingested, "val")
    except ValueError:  # no val split (val_fraction 0): report on a train subset rather than nothing
        val_images = train_images[:256]
    train = to_model_space(train_images)
    val = to_model_space(val_images[:512])

    # 1. model and optimiser
    vae = build_vae(
        block_out_channels=v.block_out_channels,
        layers_per_block=v.layers_per_block,
        norm_num_groups=v.norm_num_groups,
        latent_channels=v.latent_channels,
    ).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=v.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    gen = torch.Generator().manual_seed(cfg.seed)
    if tracker:
        tracker.log_metrics({"vae_parameters": sum(p.numel() for p in vae.parameters())})

    # 2. training: random batches with replacement across steps
    start = time.perf_counter()
    vae.train()
    bar = progress(range(v.steps), desc="train_vae", unit="step")
    for step in bar:
        idx = torch.randint(len(train), (v.batch_size,), generator=gen)
        batch = train[idx].to(device)
        with autocast(device):
            loss, parts, _ = vae_loss(vae, batch, v.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % v.log_every == 0 or step == v.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if tracker:
                tracker.log_metrics({"train_loss": loss.item(), **parts}, step=step)
    seconds = time.perf_counter() - start

    # 3. latent statistics of the train split into the model's own config, then validation
    vae.eval()
    with torch.no_grad():
        norm = set_normalisation(vae, (b.to(device) for b in batches(train[:2048], 256)), v.latent_norm)
        recon = torch.cat([vae(b.to(device)).sample.float().cpu() for b in batches(val, 256)])
    metrics = {
        "val_psnr": psnr(recon, val),
        **{k: v for k, v in norm.items() if v is not None},
        "final_train_loss": float(loss.item()),
        "steps": v.steps,
        "train_seconds": round(seconds, 2),
    }

    out.mkdir(parents=True, exist_ok=True)
    vae.to("cpu").save_pretrained(out, safe_serialization=True)
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    if tracker:
        tracker.log_metrics({k: metrics[k] for k in ("val_psnr", "scaling_factor", "train_seconds")})
        tracker.log_dict(norm, "latent_normalisation.json")
        pairs = np.concatenate([to_uint8(val[:16]), to_uint8(recon[:16])])  # originals, then reconstructions
        tracker.log_image(make_grid(pairs, ncols=16), "reconstructions.png")
    return metrics
