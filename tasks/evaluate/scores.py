"""What evaluation measures on any data: generated samples for held-out captions, in the judge's space,
each figure with its frame beside it (chance and the ceiling of real images for R-precision; the
real-vs-real floor, train against held-out, for the distances).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.judge import embed_images
from models.judge_metrics import frechet_and_kid, precision_recall
from tasks.common.ingested import MANIFEST, ImageShards
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


def _embedded(ready: ReadyJudge, images: ImageSet) -> tuple[torch.Tensor, list[str]]:
    emb = torch.cat([embed_images(ready.judge, batch) for _, batch in images])
    return emb, [c for rows, _ in images for c in rows["caption"]]


def judge_scores(
    ready: ReadyJudge, samples: np.ndarray, prompts: list[str], held_out: ImageSet, train: ImageSet, seed: int
) -> dict[str, float]:
    """Samples (one per prompt, a held-out caption) against the held-out images of those captions; the
    floor: `train` images (caption-matched, see caption_matched_rows) against the same held-out ones."""
    sample_emb = embed_images(ready.judge, samples)
    real_emb, real_captions = _embedded(ready, held_out)
    train_emb, _ = _embedded(ready, train)
    r_precision, pool = ready.r_precision(sample_emb, prompts, seed)
    ceiling, _ = ready.r_precision(real_emb, real_captions, seed)
    real_images = [batch for _, batch in held_out]
    fd, kid = frechet_and_kid(ready.judge, real_images, [samples], seed=seed)
    fd_floor, kid_floor = frechet_and_kid(ready.judge, real_images, [batch for _, batch in train], seed=seed)
    precision, recall = precision_recall(real_emb, sample_emb)
    precision_real, recall_real = precision_recall(real_emb, train_emb)
    return {
        "r_precision_judge": r_precision,
        "r_precision_judge_ceiling": ceiling,  # real held-out images against their own captions
        "r_precision_chance": 1.0 / pool,
        "r_precision_pool": pool,
        "fd_judge": fd,
        "fd_judge_floor": fd_floor,  # real train images of the same captions against the held-out ones
        "kid_judge": kid,
        "kid_judge_floor": kid_floor,
        "precision_judge": precision,
        "recall_judge": recall,
        "precision_judge_real": precision_real,
        "recall_judge_real": recall_real,
    }
