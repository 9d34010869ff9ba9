"""Conversions between stored images (uint8 [N, H, W, 3]) and model space (float [N, 3, H, W] in [-1, 1]),
and a grid of images for looking at them."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from PIL import Image


class Images(Protocol):
    """uint8 images [N, H, W, 3]: an array, or anything that indexes like one and reads on demand."""

    def __len__(self) -> int: ...

    def __getitem__(self, which: slice | np.ndarray) -> np.ndarray: ...


def to_model_space(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1]."""
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (values outside the range are clipped)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> Image.Image:
    """Tile uint8 images [N, H, W, 3] into one picture, ncols per row (default: about square)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"make_grid needs uint8 images [N, H, W, 3] with N > 0, got shape {images.shape}")
    n, h, w, _ = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), dtype=np.uint8)
    for i, img in enumerate(images.astype(np.uint8)):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = img
    return Image.fromarray(grid)
