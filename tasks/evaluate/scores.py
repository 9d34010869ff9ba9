"""What evaluation measures on any data: generated samples for held-out captions, in the judge's space,
each figure with its frame beside it (chance and the ceiling of real images for R-precision; the
real-vs-real floor, train against held-out, for the distances).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL

from models.autoencoder.latent_space import reconstruct
from models.judges.judge import embed_images
from models.judges.judge_metrics import frechet_and_kid, precision_recall
from tasks.common.ingested import ImageShards
from tasks.common.paths import MANIFEST
from tasks.evaluate.judge import ReadyJudge

# (manifest rows, their images uint8 [n, H, W, 3]) for each image size
ImageSet = list[tuple[pd.DataFrame, np.ndarray]]


def choose_rows(ingested: Path, split: str, n: int, seed: int) -> pd.DataFrame:
    """`n` rows of a split (all of them if it has fewer), chosen reproducibly by seed."""
    manifest = pd.read_parquet(ingested / MANIFEST)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"{ingested / MANIFEST}: no {split} images to evaluate with")
    return rows.sample(n=min(n, len(rows)), random_state=seed).reset_index(drop=True)


def caption_matched_rows(ingested: Path, held_out: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, float]:
    """One train row per held-out row: one with the same caption where the train split has one, else any
    other train row. The real-vs-real floor compares these with the held-out images, so that it sees the
    same captions as the samples do. Returns the rows and the fraction that share the caption."""
    manifest = pd.read_parquet(ingested / MANIFEST)
    train = manifest[manifest["split"] == "train"].sample(frac=1.0, random_state=seed)  # shuffled
    if len(train) < len(held_out):
        raise ValueError(
            f"{ingested / MANIFEST}: fewer train images ({len(train)}) than held-out ones to match"
        )
    by_caption = {caption: list(rows.index) for caption, rows in train.groupby("caption", sort=False)}
    picked: list[int] = []
    for caption in held_out["caption"]:
        same = by_caption.get(caption, [])
        if same:
            picked.append(same.pop())
    matched = len(picked)
    used = set(picked)
    picked += [i for i in train.index if i not in used][: len(held_out) - matched]
    return train.loc[picked].reset_index(drop=True), matched / len(held_out)


def read_rows(ingested: Path, rows: pd.DataFrame) -> ImageSet:
    """The images of `rows`, read from their shards, grouped by size."""
    shards = ImageShards(ingested)
    return [
        (group, shards.images(list(zip(group["shard"], group["index"], strict=True))))
        for _, group in rows.groupby("bucket", sort=True)
    ]


class RealReference:
    """The real images samples are measured against, and what the judge says of real ones: held-out
    images of the prompts' captions, and as many caption-matched train images (see caption_matched_rows).
    Computed once per set of prompts; `scores` then costs the samples' share only."""

    def __init__(self, ready: ReadyJudge, ingested: Path, prompts: pd.DataFrame, seed: int) -> None:
        self.ready, self.seed = ready, seed
        self.held_out = read_rows(ingested, prompts)
        self.train_rows, matched = caption_matched_rows(ingested, prompts, seed)  # images read as needed
        self.real_emb = torch.cat([embed_images(ready.judge, batch) for _, batch in self.held_out])
        train = read_rows(ingested, self.train_rows)
        train_emb = torch.cat([embed_images(ready.judge, batch) for _, batch in train])
        captions = [c for rows, _ in self.held_out for c in rows["caption"]]
        ceiling, _ = ready.r_precision(self.real_emb, captions, seed)
        fd_floor, kid_floor = frechet_and_kid(self.real_emb, train_emb, seed=seed)
        precision_real, recall_real = precision_recall(self.real_emb, train_emb)
        self.frame = {
            "r_precision_judge_ceiling": ceiling,  # real held-out images against their own captions
            "fd_judge_floor": fd_floor,  # real train images of the same captions against the held-out ones
            "kid_judge_floor": kid_floor,
            "precision_judge_real": precision_real,
            "recall_judge_real": recall_real,
            "floor_caption_matched": matched,
        }

    def reconstruction(self, vae: AutoencoderKL) -> dict[str, float]:
        """The VAE's reconstructions of the held-out images against the images, in the judge's space: what
        the autoencoder alone costs, to read beside the real-vs-real floor."""
        recon = [embed_images(self.ready.judge, reconstruct(vae, images)) for _, images in self.held_out]
        fd, _ = frechet_and_kid(self.real_emb, torch.cat(recon), seed=self.seed)
        return {"fd_judge_reconstruction": fd}

    def scores(self, samples: np.ndarray, prompts: list[str]) -> dict[str, float]:
        """Samples, one per prompt (a held-out caption), in the judge's space, framed by the real figures."""
        sample_emb = embed_images(self.ready.judge, samples)
        r_precision, pool = self.ready.r_precision(sample_emb, prompts, self.seed)
        others = np.random.default_rng(self.seed).permutation(len(prompts))  # each sample, another's caption
        shuffled, _ = self.ready.r_precision(sample_emb, [prompts[i] for i in others], self.seed)
        fd, kid = frechet_and_kid(self.real_emb, sample_emb, seed=self.seed)
        precision, recall = precision_recall(self.real_emb, sample_emb)
        return {
            "r_precision_judge": r_precision,
            "r_precision_chance": 1.0 / pool,
            "r_precision_pool": pool,
            "r_precision_judge_shuffled": shuffled,  # a control: expected near chance
            "fd_judge": fd,
            "kid_judge": kid,
            "precision_judge": precision,
            "recall_judge": recall,
        } | self.frame
