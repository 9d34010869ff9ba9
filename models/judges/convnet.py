"""The small convolutional image encoder that evaluation's own models (the attribute probe, the judge)
share, and the augmentation that makes them robust to imperfect samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def trunk_features(width: int, pooled_side: int) -> int:
    """How many features `conv_trunk(width, pooled_side)` gives per image."""
    return 2 * width * pooled_side * pooled_side


def conv_trunk(width: int, pooled_side: int) -> nn.Sequential:
    """Images [B, 3, H, W] in [-1, 1], any H, W >= 16 -> features [B, trunk_features].

    One conv at full resolution, two downsamplings with two convs each, then average pooling to a
    `pooled_side` x `pooled_side` grid: 1 keeps what is in the image, more also keeps where it is.
    """

    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
        )  # fmt: skip

    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.GroupNorm(8, width),
        nn.SiLU(),
        nn.MaxPool2d(2),
        block(width, 2 * width),
        nn.MaxPool2d(2),
        block(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(pooled_side),
        nn.Flatten(),
    )


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of x [B, C, H, W] with its own sigma [B] (separable 5-tap Gaussian)."""
    b, c, h, w = x.shape
    r = torch.arange(-2, 3, device=x.device, dtype=x.dtype)  # [5]
    k = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))  # [B, 5]
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, 5]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def imperfect(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random blur (half the batch, sigma up to 1.5 px) and Gaussian noise, like imperfect samples."""
    b = x.shape[0]
    sigma = torch.rand(b, generator=gen) * 1.5 * (torch.rand(b, generator=gen) < 0.5)
    x = torch.where(sigma.to(x.device)[:, None, None, None] > 0, gaussian_blur(x, sigma.to(x.device)), x)
    noise_std = torch.rand(b, 1, 1, 1, generator=gen) * 0.1
    return x + noise_std.to(x.device) * torch.randn(x.shape, generator=gen).to(x.device)
