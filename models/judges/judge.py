"""The judge: an image encoder and a caption head trained contrastively (InfoNCE) into one embedding space,
so that a generated image can be scored against captions on any data, without a pretrained CLIP.

The caption side reads the frozen per-token embeddings of the text cache (what the U-Net is conditioned
on), mean-pooled over real tokens, through a small trainable head. The image side is a small CNN that
keeps a coarse spatial grid, so "at the top left" is as visible to it as "red". The judge is trained on
real train images only, as AttnGAN's DAMSM and the text-to-motion evaluators (Guo et al. 2022) are, and is
never a training loss of the model it judges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.judges.convnet import conv_trunk, imperfect, trunk_features
from models.sampler.device import pick_device
from models.sampler.images import Images, to_model_space

# caption rows -> (token embeddings float [U, L, D], attention masks [U, L])
CaptionRows = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class JudgeShape:
    text_dim: int  # the text encoder's hidden size
    embed_dim: int = 64
    width: int = 32
    grid: int = 4  # the image encoder pools to grid x grid before its projection
    resolution: int = 32  # larger images are scaled down to this longer side first: a judge stays cheap


class Judge(nn.Module):
    def __init__(self, shape: JudgeShape) -> None:
        super().__init__()
        self.shape = shape
        self.image_encoder = nn.Sequential(
            conv_trunk(shape.width, pooled_side=shape.grid),
            nn.Linear(trunk_features(shape.width, shape.grid), shape.embed_dim),
        )
        hidden = 2 * shape.embed_dim
        self.caption_head = nn.Sequential(
            nn.Linear(shape.text_dim, hidden), nn.GELU(), nn.Linear(hidden, shape.embed_dim)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> unit vectors [B, embed_dim]."""
        longer = max(x.shape[-2:])
        if longer > self.shape.resolution:
            x = F.interpolate(x, scale_factor=self.shape.resolution / longer, mode="bilinear", antialias=True)
        return F.normalize(self.image_encoder(x), dim=-1)

    def embed_captions(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cached token embeddings [U, L, D] and masks [U, L] -> unit vectors [U, embed_dim]."""
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # [U, L, 1]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # mean over real tokens
        return F.normalize(self.caption_head(pooled), dim=-1)


def contrastive_loss(
    image_emb: torch.Tensor, caption_emb: torch.Tensor, owner: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between B images and their U distinct captions (image b has caption owner[b]).

    Images that share a caption are all positives of it (no false negatives from duplicate captions)."""
    logits = scale * image_emb @ caption_emb.T  # [B, U]
    image_to_caption = F.cross_entropy(logits, owner)
    captions = torch.arange(len(caption_emb), device=owner.device)
    positives = (owner[None, :] == captions[:, None]).float()  # [U, B]: caption u's images
    log_p = F.log_softmax(logits.T, dim=1)  # each caption over the images
    caption_to_image = -((log_p * positives).sum(1) / positives.sum(1)).mean()
    return (image_to_caption + caption_to_image) / 2


def train_judge(
    groups: Sequence[tuple[Images, np.ndarray]],
    captions: CaptionRows,
    shape: JudgeShape,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device | str | None = None,
) -> Judge:
    """Fit the judge on real images and the caption row of each: `groups` holds (images of one size, their
    caption rows) per image size; a batch comes from one group, picked in proportion to its size."""
    sizes = np.array([len(images) for images, _ in groups], dtype=np.float64)
    if sizes.sum() == 0:
        raise ValueError("the judge needs at least one training image")
    device = device if isinstance(device, torch.device) else pick_device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    judge = Judge(shape).to(device)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    judge.train()
    for _ in range(steps):
        images, rows = groups[rng.choice(len(groups), p=sizes / sizes.sum())]
        picked = np.sort(rng.choice(len(images), size=min(batch_size, len(images)), replace=False))
        x = imperfect(to_model_space(images[picked]).to(device), gen)
        distinct, owner = np.unique(rows[picked], return_inverse=True)
        hidden, mask = captions(distinct)
        loss = contrastive_loss(
            judge.embed_images(x),
            judge.embed_captions(hidden.to(device), mask.to(device)),
            torch.as_tensor(owner, device=device),
            judge.logit_scale.exp().clamp(max=100.0),
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return judge.eval()


@torch.no_grad()
def embed_images(judge: Judge, images: Images, batch_size: int = 256) -> torch.Tensor:
    """uint8 images [N, H, W, 3] (one size) -> unit vectors [N, embed_dim] on the CPU."""
    device = next(judge.parameters()).device
    out = [
        judge.embed_images(to_model_space(images[i : i + batch_size]).to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, judge.shape.embed_dim)


@torch.no_grad()
def embed_caption_rows(
    judge: Judge, captions: CaptionRows, rows: np.ndarray, batch_size: int = 256
) -> torch.Tensor:
    """Caption rows [C] -> unit vectors [C, embed_dim] on the CPU."""
    device = next(judge.parameters()).device
    out = []
    for i in range(0, len(rows), batch_size):
        hidden, mask = captions(rows[i : i + batch_size])
        out.append(judge.embed_captions(hidden.to(device), mask.to(device)).cpu())
    return torch.cat(out) if out else torch.zeros(0, judge.shape.embed_dim)
