"""Interpolation grids of a trained model (models/interpolation.py has the maths): one prompt between two
seeds, two prompts at one seed, and a sheet over four seeds. Every frame is sampled exactly as `generate`
samples, so a walk's end is the sample `generate` gives for that anchor."""

from __future__ import annotations

import numpy as np
import torch

from models.interpolation import fractions, lerp, slerp, slerp_sheet
from models.pipeline import LatentDiffusionPipeline


def seed_walk(
    pipe: LatentDiffusionPipeline, prompt: str, seeds: tuple[int, int], frames: int, steps: int,
    guidance: float, batch_size: int = 8,
) -> np.ndarray:  # fmt: skip
    """One prompt; the initial noise slerped from seed a's to seed b's: uint8 [frames, H, W, 3]."""
    a, b = (pipe.initial_noise(1, seed) for seed in seeds)
    noise = torch.cat([slerp(a, b, t) for t in fractions(frames)])
    hidden, mask = pipe.encode([prompt])
    hidden, mask = hidden.expand(frames, -1, -1), mask.expand(frames, -1)
    return pipe.sample(hidden, mask, noise, steps, guidance, batch_size)


def prompt_walk(
    pipe: LatentDiffusionPipeline, prompts: tuple[str, str], seed: int, frames: int, steps: int,
    guidance: float, batch_size: int = 8,
) -> np.ndarray:  # fmt: skip
    """Two prompts at one seed: their text embeddings interpolated linearly, the noise fixed. A token
    counts where either prompt has one (each end keeps its own prompt's mask): uint8 [frames, H, W, 3]."""
    hidden, mask = pipe.encode(list(prompts))
    either = torch.maximum(mask[0], mask[1])
    steps_t = fractions(frames)
    walked = torch.stack([lerp(hidden[0], hidden[1], t) for t in steps_t])
    masks = torch.stack([mask[0] if t == 0 else mask[1] if t == 1 else either for t in steps_t])
    noise = pipe.initial_noise(1, seed).expand(frames, -1, -1, -1)
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
