"""train_unet stage: a text-conditioned diffusers U-Net trained on the S3 latent and text caches.

Epsilon objective, caption dropout (the empty caption) for classifier-free guidance, EMA of the weights,
AdamW with linear warmup. Writes `artifacts/unet/` (the EMA weights as a diffusers model dir, the
training noise scheduler under `scheduler/`) and `artifacts/unet/metrics.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from models.device import autocast, pick_device
from models.diffusion import diffusion_loss, make_train_scheduler
from models.latents import to_diffusion_space
from models.unet import build_unet
from tasks.cache import gather
from tasks.config import Config
from tasks.progress import progress
from tasks.storage import ObjectStore
from tasks.tracking import Run

METRICS = "metrics.json"


@dataclass
class TrainingSet:
    """Everything the U-Net trains on, loaded from the caches into memory."""

    mean: torch.Tensor  # [N, C, h, w] posterior means (float16)
    std: torch.Tensor  # [N, C, h, w] posterior stds (float16)
    text_index: torch.Tensor  # [N] row of each sample's caption in `hidden`
    hidden: torch.Tensor  # [T, L, D] token embeddings of every distinct caption
    mask: torch.Tensor  # [T, L] attention masks
    empty_index: int  # row of the empty caption (classifier-free guidance)
    normalisation: dict  # the VAE's latent statistics (models/latents.py)


def load_training_set(
    latents_dir: Path, text_dir: Path, store: ObjectStore, split: str = "train"
) -> TrainingSet:
    latents = pd.read_parquet(latents_dir / "manifest.parquet")
    latents = latents[latents["split"] == split].reset_index(drop=True)
    if latents.empty:
        raise ValueError(f"{latents_dir / 'manifest.parquet'}: no samples in split {split!r}")
    text = pd.read_parquet(text_dir / "manifest.parquet")
    info = json.loads((latents_dir / "cache.json").read_text())

    def fetch(df: pd.DataFrame, name: str) -> torch.Tensor:
        return gather(
            store, df["shard"].tolist(), df["shard_sha256"].tolist(), df["shard_index"].tolist(), name
        )

    row_of = {c: i for i, c in enumerate(text["caption"])}
    missing = sorted(set(latents["caption"]) - row_of.keys())
    if missing or "" not in row_of:
        raise ValueError(
            f"{text_dir / 'manifest.parquet'}: no embedding for captions {(missing or [''])[:3]}"
        )
    return TrainingSet(
        mean=fetch(latents, "mean"),
        std=fetch(latents, "std"),
        text_index=torch.tensor([row_of[c] for c in latents["caption"]]),
        hidden=fetch(text, "hidden"),
        mask=fetch(text, "mask"),
        empty_index=row_of[""],
        normalisation=info["normalisation"],
    )


def run_train_unet(
    cfg: Config, latents_dir: Path, text_dir: Path, out: Path, store: ObjectStore, tracker: Run | None = None
) -> dict:
    u = cfg.unet
    torch.manual_seed(cfg.seed)
    device = pick_device()
    data = load_training_set(latents_dir, text_dir, store)
    n, c, h, _ = data.mean.shape
    hidden, mask = data.hidden.float().to(device), data.mask.long().to(device)

    # 1. model, EMA, noise schedule, optimiser
    unet = build_unet(
        sample_size=h,
        in_channels=c,
        block_out_channels=u.block_out_channels,
        layers_per_block=u.layers_per_block,
        attention_head_dim=u.attention_head_dim,
        cross_attention_dim=hidden.shape[-1],
        pooled_text_embedding=u.pooled_text_embedding,
    ).to(device)
    ema = EMAModel(unet.parameters(), decay=u.ema_decay, use_ema_warmup=True)
    noise_scheduler = make_train_scheduler(u.num_train_timesteps, u.beta_schedule, u.prediction_type)
    opt = torch.optim.AdamW(unet.parameters(), lr=u.lr, weight_decay=u.weight_decay)
    lr_schedule = get_scheduler("constant_with_warmup", opt, num_warmup_steps=u.warmup_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = sum(p.numel() for p in unet.parameters())
    if tracker:
        tracker.log_metrics({"unet_parameters": params, "train_samples": n})

    # 2. training loop
    unet.train()
    start = time.perf_counter()
    bar = progress(range(u.steps), desc="train_unet", unit="step")
    for step in bar:
        idx = torch.randint(n, (u.batch_size,), generator=gen)
        latents = data.mean[idx].float()
        if u.sample_posterior:  # a fresh draw z ~ q(z|x) each time, as SD trains
            latents = latents + data.std[idx].float() * torch.randn(latents.shape, generator=gen)
        latents = to_diffusion_space(latents, data.normalisation)  # ~N(0, I) per the VAE's statistics
        text_rows = data.text_index[idx].clone()
        text_rows[torch.rand(u.batch_size, generator=gen) < u.caption_dropout] = data.empty_index
        with autocast(device):
            loss = diffusion_loss(
                unet, noise_scheduler, latents.to(device), hidden[text_rows], mask[text_rows]
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        if step % u.log_every == 0 or step == u.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if tracker:
                tracker.log_metrics(
                    {"train_loss": loss.item(), "lr": lr_schedule.get_last_lr()[0]}, step=step
                )
    seconds = time.perf_counter() - start

    # 3. save the EMA weights as the model, plus the noise schedule it was trained with
    ema.copy_to(unet.parameters())
    out.mkdir(parents=True, exist_ok=True)
    unet.to("cpu").save_pretrained(out, safe_serialization=True)
    noise_scheduler.save_pretrained(out / "scheduler")
    metrics = {
        "final_train_loss": float(loss.item()),
        "steps": u.steps,
        "train_seconds": round(seconds, 2),
        "steps_per_second": round(u.steps / seconds, 3),
        "parameters": params,
    }
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    if tracker:
        tracker.log_metrics({k: metrics[k] for k in ("train_seconds", "steps_per_second")})
    return metrics
