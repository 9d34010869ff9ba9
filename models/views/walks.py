"""Interpolation grids of a trained model (interpolation.py beside this has the maths): one prompt between two
seeds, two prompts at one seed, and a sheet over four seeds. Every frame is sampled exactly as `generate`
samples, so a walk's end is the sample `generate` gives for that anchor. A pairwise walk is drawn at the
fractions of the way it is given (`fractions(n)`: evenly), and `refine_walk` adds frames where it moves
fastest."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from models.sampler.pipeline import LatentDiffusionPipeline
from models.views.interpolation import lerp, slerp, slerp_sheet


def seed_walk(
    pipe: LatentDiffusionPipeline, prompt: str, seeds: tuple[int, int], at: Sequence[float], steps: int,
    guidance: float, batch_size: int = 8,
) -> np.ndarray:  # fmt: skip
    """One prompt; the initial noise slerped from seed a's to seed b's, a frame at each fraction `at`:
    uint8 [len(at), H, W, 3]."""
    a, b = (pipe.initial_noise(1, seed) for seed in seeds)
    noise = torch.cat([slerp(a, b, t) for t in at])
    hidden, mask = pipe.encode([prompt])
    hidden, mask = hidden.expand(len(at), -1, -1), mask.expand(len(at), -1)
    return pipe.sample(hidden, mask, noise, steps, guidance, batch_size)


def prompt_walk(
    pipe: LatentDiffusionPipeline, prompts: tuple[str, str], seed: int, at: Sequence[float], steps: int,
    guidance: float, batch_size: int = 8,
) -> np.ndarray:  # fmt: skip
    """Two prompts at one seed: their text embeddings interpolated linearly, a frame at each fraction `at`,
    the noise fixed. A token counts where either prompt has one (each end keeps its own prompt's mask):
    uint8 [len(at), H, W, 3]."""
    hidden, mask = pipe.encode(list(prompts))
    either = torch.maximum(mask[0], mask[1])
    walked = torch.stack([lerp(hidden[0], hidden[1], t) for t in at])
    masks = torch.stack([mask[0] if t == 0 else mask[1] if t == 1 else either for t in at])
    noise = pipe.initial_noise(1, seed).expand(len(at), -1, -1, -1)
    return pipe.sample(walked, masks, noise, steps, guidance, batch_size)


def seed_sheet(
    pipe: LatentDiffusionPipeline, prompt: str, seeds: tuple[int, int, int, int], size: int, steps: int,
    guidance: float, batch_size: int = 8,
) -> np.ndarray:  # fmt: skip
    """One prompt over a size x size sheet whose corners are four seeds' noise (top left, top right,
    bottom left, bottom right), slerped along both directions: uint8 [size * size, H, W, 3], row-major."""
    corners = torch.cat([pipe.initial_noise(1, seed) for seed in seeds])
    noise = slerp_sheet(corners, size, size)
    hidden, mask = pipe.encode([prompt])
    n = len(noise)
    return pipe.sample(hidden.expand(n, -1, -1), mask.expand(n, -1), noise, steps, guidance, batch_size)


def refine_walk(
    walk: Callable[[list[float]], np.ndarray], at: Sequence[float], extra: int,
    widths: Callable[[np.ndarray], Sequence[float]],
) -> tuple[list[float], np.ndarray]:  # fmt: skip
    """A walk drawn at the fractions `at`, then `extra` frames more, each half-way across the widest step
    so far (`widths`: how wide each step between neighbouring frames is). A walk that moves fast in one
    stretch gets its frames there; a real jump stays as wide however often it is halved.
    Returns the fractions, in order, and their frames."""
    at = sorted(at)
    frames = walk(at)
    for _ in range(extra):
        i = int(np.argmax(widths(frames)))
        t = (at[i] + at[i + 1]) / 2
        at.insert(i + 1, t)
        frames = np.concatenate([frames[: i + 1], walk([t]), frames[i + 1 :]])
    return at, frames
