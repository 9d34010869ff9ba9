"""Metrics in the judge's embedding space: how well images match their captions (R-precision), and how
close a set of generated images lies to real ones (Fréchet distance, KID, precision and recall).

Every name says the space it is measured in (`fd_judge`, not `fid`): these are not Inception numbers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


def r_precision(
    image_emb: torch.Tensor, caption_of: np.ndarray, caption_emb: torch.Tensor, pool_size: int, seed: int
) -> tuple[float, int]:
    """Top-1 R-precision: the fraction of images whose own caption scores highest in a pool of itself and
    pool_size - 1 other captions drawn at random (Guo et al. 2022). Image i's caption is
    caption_emb[caption_of[i]]. Returns (score, the pool size used: at most the number of captions);
    chance is 1 / pool size."""
    n_captions = len(caption_emb)
    pool = min(pool_size, n_captions)
    if len(image_emb) == 0 or pool < 2:
        raise ValueError(f"R-precision needs images and at least 2 distinct captions (got {n_captions})")
    rng = np.random.default_rng(seed)
    hits = 0
    for i, own in enumerate(caption_of):
        others = rng.choice(n_captions - 1, size=pool - 1, replace=False)
        others = others + (others >= own)  # skip the image's own caption
        scores = caption_emb[np.concatenate([[own], others])] @ image_emb[i]  # [pool]
        hits += int(scores[0] > scores[1:].max())
    return hits / len(caption_of), pool


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision is the fraction of generated
    points inside the real manifold (the union of balls reaching each real point's k-th neighbour),
    recall the fraction of real points inside the generated one."""

    def covered(ref: torch.Tensor, query: torch.Tensor) -> float:
        k_eff = min(k, len(ref) - 1)
        if k_eff < 1:
            raise ValueError(f"precision/recall need more than one point per set (got {len(ref)})")
        radii = torch.cdist(ref, ref).kthvalue(k_eff + 1, dim=1).values  # +1: each point is its own 0th
        return float((torch.cdist(query, ref) <= radii[None, :]).any(dim=1).float().mean())

    real, fake = real.double(), fake.double()
    return covered(real, fake), covered(fake, real)


class _Computed(nn.Module):
    """A torchmetrics feature extractor for features computed already: passes them through."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.double()


def frechet_and_kid(
    real: torch.Tensor, fake: torch.Tensor, kid_subsets: int = 50, seed: int = 0
) -> tuple[float, float]:
    """Fréchet distance and KID (mean over subsets) between real and generated images given as features
    [n, d] (torchmetrics, fed features computed already: the judge's embeddings the other metrics use, or
    Inception's), so no image is encoded twice. KID's subsets are drawn with `seed`."""
    features = _Computed(real.shape[1])
    fd = FrechetInceptionDistance(feature=features, reset_real_features=True)
    kid = KernelInceptionDistance(
        feature=features, subset_size=min(len(real), len(fake), 100), subsets=kid_subsets
    )
    for metric in (fd, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    with torch.random.fork_rng():  # KID draws its subsets from torch's global generator
        torch.manual_seed(seed)
        kid_mean = float(kid.compute()[0])
    return float(fd.compute()), kid_mean
