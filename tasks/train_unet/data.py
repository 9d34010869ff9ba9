"""What the U-Net trains on, read from the caches: the training samples (their latents stay in their
shards and stream, latent_stream.py), every distinct caption's token embeddings (their shards copied to
local disk, a micro-batch's rows read from there: captions.py), the held-out samples; and how one
global batch becomes this process's micro-batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from infra.storage import ObjectStore
from models.diffusion.sample_draws import draw_samples
from models.sampler.latents import to_diffusion_space
from tasks.common.captions import CaptionTable
from tasks.common.config import Config
from tasks.common.keys import content_key
from tasks.common.paths import CACHE_INFO, MANIFEST
from tasks.train_unet.trainer import MicroBatch


@dataclass
class TrainingSet:
    """What the U-Net trains on: latent samples (streamed from their shards) and every caption's tokens."""

    items: pd.DataFrame  # one row per training sample: where its latents are, its bucket and caption
    text_index: torch.Tensor  # [N] row of each sample's caption in `captions`
    captions: CaptionTable  # token embeddings and masks of every distinct caption, read a batch at a time
    empty_index: int  # row of the empty caption (classifier-free guidance)
    normalisation: dict  # the VAE's latent statistics (models/sampler/latents.py)
    latent_shapes: dict[str, list[int]]  # bucket -> [C, h, w]
    identity: str  # hashes the samples, their latent keys and the caption keys: what was trained on
    held_out: pd.DataFrame  # the other split's rows (validation), those whose caption has an embedding
    text_row: dict[str, int]  # caption -> row of `captions`

    def text(self, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (float32) and attention masks (int64) of caption rows `rows`, as the U-Net
        takes them (stored as float16, on local disk)."""
        return self.captions.rows(rows)


def load_training_set(
    latents_dir: Path, text_dir: Path, store: ObjectStore, text_folder: Path, split: str = "train"
) -> TrainingSet:
    """The training samples of `split` and the caption embeddings, whose shards are copied into
    `text_folder` (a local folder)."""
    everything = pd.read_parquet(latents_dir / MANIFEST)
    latents = everything[everything["split"] == split].reset_index(drop=True)
    if latents.empty:
        raise ValueError(f"{latents_dir / 'manifest.parquet'}: no samples in split {split!r}")
    text = pd.read_parquet(text_dir / MANIFEST)
    info = json.loads((latents_dir / CACHE_INFO).read_text())
    row_of = {c: i for i, c in enumerate(text["caption"])}
    missing = sorted(set(latents["caption"]) - row_of.keys())
    if missing or "" not in row_of:
        raise ValueError(
            f"{text_dir / 'manifest.parquet'}: no embedding for captions {(missing or [''])[:3]}"
        )

    return TrainingSet(
        items=latents,
        text_index=torch.tensor([row_of[c] for c in latents["caption"]]),
        captions=CaptionTable(store, text, text_folder),
        empty_index=row_of[""],
        normalisation=info["normalisation"],
        latent_shapes={b: info["latent_shapes"][b] for b in sorted(set(latents["bucket"]))},
        identity=content_key(
            latents["sample_id"].tolist(), latents["latent_key"].tolist(), text["text_key"].tolist()
        ),
        held_out=everything[(everything["split"] != split) & everything["caption"].isin(row_of)],
        text_row=row_of,
    )


def micro_batches(
    cfg: Config, data: TrainingSet, step: int, rows: np.ndarray, cached: dict[str, torch.Tensor],
    rank: int, processes: int,
) -> list[MicroBatch]:  # fmt: skip
    """This process's share of a global batch, on the CPU: micro-batch m of process r holds positions
    [(m * processes + r) * B, + B)."""
    u, b = cfg.unet, cfg.unet.batch_size
    shape = tuple(cached["mean"].shape[1:])
    out = []
    for m in range(u.gradient_accumulation):
        lo = (m * processes + rank) * b
        part = slice(lo, lo + b)
        draws = draw_samples(
            cfg.seed, step, range(lo, lo + b), u.num_train_timesteps, shape, u.caption_dropout
        )
        mean, std = cached["mean"][part], cached["std"][part]
        if "mean_flip" in cached:  # latents.flip: each sample's mirror half the time
            mirror = draws.mirror.view(-1, 1, 1, 1)
            mean = mean.where(~mirror, cached["mean_flip"][part])
            std = std.where(~mirror, cached["std_flip"][part])
        latents = mean.float()
        if u.sample_posterior:  # a fresh draw z ~ q(z|x) each time, as SD trains
            latents = latents + std.float() * draws.posterior
        text_rows = data.text_index[rows[part]].clone()
        text_rows[draws.drop_caption] = data.empty_index
        latents = to_diffusion_space(latents, data.normalisation)  # ~N(0, I) per the VAE's statistics
        out.append(MicroBatch(latents, *data.text(text_rows), draws.noise))
    return out
