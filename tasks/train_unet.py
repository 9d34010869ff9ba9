"""train_unet stage: a text-conditioned diffusers U-Net trained on the S3 latent and text caches.

Epsilon or v-prediction objective, caption dropout (the empty caption) for classifier-free guidance, EMA
of the weights, AdamW with linear warmup. Latent batches stream from their shards (tasks/loader.py); the
caption embeddings, small, are held in memory. Writes `artifacts/unet/` (the EMA weights as a diffusers
model dir, the training noise scheduler under `scheduler/`) and `artifacts/unet/metrics.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from models.device import autocast, pick_device
from models.diffusion import diffusion_loss, make_train_scheduler
from models.latents import to_diffusion_space
from models.unet import build_unet
from tasks.cache import gather
from tasks.config import Config, UnetConfig
from tasks.loader import LatentStream
from tasks.progress import progress
from tasks.shards import CorruptShard
from tasks.storage import ObjectNotFound, ObjectStore
from tasks.tracking import Run

METRICS = "metrics.json"


@dataclass
class TrainingSet:
    """What the U-Net trains on: latent samples (streamed from their shards) and every caption's tokens."""

    items: pd.DataFrame  # one row per training sample: where its latents are, its bucket and caption
    text_index: torch.Tensor  # [N] row of each sample's caption in `hidden`
    hidden: torch.Tensor  # [T, L, D] token embeddings of every distinct caption
    mask: torch.Tensor  # [T, L] attention masks
    empty_index: int  # row of the empty caption (classifier-free guidance)
    normalisation: dict  # the VAE's latent statistics (models/latents.py)
    latent_shapes: dict[str, list[int]]  # bucket -> [C, h, w]


def load_training_set(
    latents_dir: Path, text_dir: Path, store: ObjectStore, split: str = "train"
) -> TrainingSet:
    latents = pd.read_parquet(latents_dir / "manifest.parquet")
    latents = latents[latents["split"] == split].reset_index(drop=True)
    if latents.empty:
        raise ValueError(f"{latents_dir / 'manifest.parquet'}: no samples in split {split!r}")
    text = pd.read_parquet(text_dir / "manifest.parquet")
    info = json.loads((latents_dir / "cache.json").read_text())
    row_of = {c: i for i, c in enumerate(text["caption"])}
    missing = sorted(set(latents["caption"]) - row_of.keys())
    if missing or "" not in row_of:
        raise ValueError(
            f"{text_dir / 'manifest.parquet'}: no embedding for captions {(missing or [''])[:3]}"
        )

    def fetch(name: str) -> torch.Tensor:
        refs = [text[c].tolist() for c in ("shard", "shard_sha256", "shard_index")]
        try:
            return gather(store, *refs, name)
        except (CorruptShard, ObjectNotFound) as err:  # never train on it: the cache stage recomputes it
            raise CorruptShard(f"{err}\nrun `ldmflow run embed_text --force` to recompute it") from err

    return TrainingSet(
        items=latents,
        text_index=torch.tensor([row_of[c] for c in latents["caption"]]),
        hidden=fetch("hidden"),
        mask=fetch("mask"),
        empty_index=row_of[""],
        normalisation=info["normalisation"],
        latent_shapes={b: info["latent_shapes"][b] for b in sorted(set(latents["bucket"]))},
    )


@dataclass
class UnetTraining:
    """The U-Net and what trains it: EMA of its weights, the noise schedule, optimiser and LR schedule."""

    unet: UNet2DConditionModel
    ema: EMAModel
    noise_scheduler: DDPMScheduler
    opt: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LRScheduler
    device: torch.device

    @classmethod
    def build(
        cls, u: UnetConfig, sample_size: int, in_channels: int, cross_attention_dim: int, device: torch.device
    ) -> UnetTraining:
        unet = build_unet(
            sample_size=sample_size,
            in_channels=in_channels,
            block_out_channels=u.block_out_channels,
            layers_per_block=u.layers_per_block,
            attention_head_dim=u.attention_head_dim,
            cross_attention_dim=cross_attention_dim,
            pooled_text_embedding=u.pooled_text_embedding,
        ).to(device)
        ema = EMAModel(unet.parameters(), decay=u.ema_decay, use_ema_warmup=True)
        noise_scheduler = make_train_scheduler(u.num_train_timesteps, u.beta_schedule, u.prediction_type)
        opt = torch.optim.AdamW(unet.parameters(), lr=u.lr, weight_decay=u.weight_decay)
        lr_schedule = get_scheduler("constant_with_warmup", opt, num_warmup_steps=u.warmup_steps)
        return cls(unet, ema, noise_scheduler, opt, lr_schedule, device)

    def step(self, latents: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One optimisation step on normalised latents [B, C, h, w] and their captions' tokens; the loss."""
        with autocast(self.device):
            loss = diffusion_loss(self.unet, self.noise_scheduler, latents.to(self.device), hidden, mask)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        self.lr_schedule.step()
        self.ema.step(self.unet.parameters())
        return loss


def run_train_unet(
    cfg: Config,
    latents_dir: Path,
    text_dir: Path,
    out: Path,
    store: ObjectStore,
    tracker: Run | None = None,
    shard_cache: Path | None = None,
) -> dict:
    """Train the U-Net on the caches; latent shards stream through `shard_cache` (a local folder)."""
    u = cfg.unet
    torch.manual_seed(cfg.seed)
    device = pick_device()
    data = load_training_set(latents_dir, text_dir, store)
    n = len(data.items)
    shapes = [tuple(shape) for shape in data.latent_shapes.values()]  # (C, h, w) of each bucket
    factor = 2 ** (len(u.block_out_channels) - 1)
    for _, lh, lw in shapes:
        if lh % factor or lw % factor:
            raise ValueError(
                f"latents of {lw}x{lh} do not divide by the U-Net's downsampling {factor}: make "
                f"data.buckets.step a multiple of the VAE's factor x {factor}"
            )
    # the model's default sample size: the square bucket when there is one, else the largest
    c, h, _ = max(shapes, key=lambda s: (s[1] == s[2], s[1] * s[2]))
    hidden, mask = data.hidden.float().to(device), data.mask.long().to(device)

    # 1. model, EMA, noise schedule, optimiser
    training = UnetTraining.build(u, h, c, hidden.shape[-1], device)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = sum(p.numel() for p in training.unet.parameters())
    if tracker:
        tracker.log_metrics({"unet_parameters": params, "train_samples": n})

    # 2. training loop: batches streamed from the latent shards, epoch after epoch
    stream = LatentStream(
        store, data.items, u.batch_size, cfg.seed, shard_cache or out.parent / ".shard-cache",
        max_bytes=u.shard_cache_mb * 2**20, window=u.shuffle_window, prefetch=u.prefetch_shards,
    )  # fmt: skip
    batches = stream.batches()
    training.unet.train()
    start = time.perf_counter()
    bar = progress(range(u.steps), desc="train_unet", unit="step")
    for step in bar:
        batch, cached = next(batches)  # one latent shape per batch
        mean, std = cached["mean"], cached["std"]
        if "mean_flip" in cached:  # latents.flip: each sample's mirror half the time
            mirrored = (torch.rand(len(mean), generator=gen) < 0.5).view(-1, 1, 1, 1)
            mean, std = mean.where(~mirrored, cached["mean_flip"]), std.where(~mirrored, cached["std_flip"])
        latents = mean.float()
        if u.sample_posterior:  # a fresh draw z ~ q(z|x) each time, as SD trains
            latents = latents + std.float() * torch.randn(latents.shape, generator=gen)
        latents = to_diffusion_space(latents, data.normalisation)  # ~N(0, I) per the VAE's statistics
        text_rows = data.text_index[batch.rows].clone()
        text_rows[torch.rand(u.batch_size, generator=gen) < u.caption_dropout] = data.empty_index
        loss = training.step(latents, hidden[text_rows], mask[text_rows])
        if step % u.log_every == 0 or step == u.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if tracker:
                tracker.log_metrics(
                    {"train_loss": loss.item(), "lr": training.lr_schedule.get_last_lr()[0]}, step=step
                )
    seconds = time.perf_counter() - start

    # 3. save the EMA weights as the model, plus the noise schedule it was trained with
    training.ema.copy_to(training.unet.parameters())
    out.mkdir(parents=True, exist_ok=True)
    training.unet.to("cpu").save_pretrained(out, safe_serialization=True)
    training.noise_scheduler.save_pretrained(out / "scheduler")
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
