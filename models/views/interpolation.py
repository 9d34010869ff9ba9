"""Walks through a model's inputs: spherical interpolation of initial noise, linear interpolation of prompt
embeddings, and a bilinear sheet over four anchors.

Why slerp for noise: a draw from N(0, I) in d dimensions lies near the sphere of radius sqrt(d), and two
draws are nearly orthogonal. Their straight-line midpoint has norm about sqrt(d / 2), a point the model
never saw as x_T (its samples wash out towards grey); the great circle between them keeps the norm.
"""

from __future__ import annotations

import torch

# Below this angle (radians) between two inputs, slerp is replaced by lerp: sin(omega) is too small to
# divide by, and the two paths agree to well within float precision there.
PARALLEL = 1e-4


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between `a` and `b` [B, ...] at `t` in [0, 1] (a float, or [B] per row).

    Each row moves along the great circle from a[i] to b[i] (Shoemake 1985); t=0 gives `a`, t=1 gives `b`
    exactly. Rows of equal norm keep that norm all the way."""
    if a.shape != b.shape:
        raise ValueError(f"slerp needs inputs of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    flat_a, flat_b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1).expand(a.shape[0], 1)
    norms = flat_a.norm(dim=1, keepdim=True) * flat_b.norm(dim=1, keepdim=True)
    cos = (flat_a * flat_b).sum(1, keepdim=True) / norms
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(omega)
    parallel = omega < PARALLEL
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    w_a = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * omega) / safe)
    w_b = torch.where(parallel, t, torch.sin(t * omega) / safe)
    out = w_a * flat_a + w_b * flat_b
    out = torch.where(t == 0, flat_a, torch.where(t == 1, flat_b, out))  # the anchors themselves, bit for bit
    return out.reshape(a.shape).to(a.dtype)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """(1 - t) a + t b, with the anchors returned unchanged at t=0 and t=1."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    return torch.lerp(a.double(), b.double(), t).to(a.dtype)


def slerp_sheet(corners: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Bilinear interpolation over four anchors with slerp along both directions: corners [4, ...] are
    (top left, top right, bottom left, bottom right); returns [rows * cols, ...], row-major. The edges are
    the pairwise slerps between their corners, and every point keeps the corners' norm when they share it."""
    if corners.shape[0] != 4 or rows < 2 or cols < 2:
        raise ValueError(f"slerp_sheet needs 4 corners and 2x2 points or more: {len(corners)}, {rows}x{cols}")
    top_left, top_right, bottom_left, bottom_right = corners
    out = []
    for i in range(rows):
        v = i / (rows - 1)
        left = slerp(top_left[None], bottom_left[None], v)
        right = slerp(top_right[None], bottom_right[None], v)
        for j in range(cols):
            out.append(slerp(left, right, j / (cols - 1))[0])
    return torch.stack(out)


def fractions(frames: int) -> list[float]:
    """`frames` evenly spaced points of [0, 1], both ends included."""
    if frames < 2:
        raise ValueError(f"an interpolation needs at least 2 frames, got {frames}")
    return [i / (frames - 1) for i in range(frames)]
