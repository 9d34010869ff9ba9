"""Every random choice a training step makes for a sample, from a generator of that sample's own.

The generator is keyed by (seed, step, position of the sample in the step's global batch), so a
sample's timestep, noise, caption dropout, mirror choice and posterior draw do not depend on how the
global batch is split: 2 processes x batch B, 1 process x batch 2B and 1 process x B with 2
accumulation steps draw the same, and a resumed run draws what the uninterrupted run drew.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.diffusion.objectives import NoiseDraw


def keyed_generator(*words: int) -> torch.Generator:
    """A CPU generator seeded by a hash of `words` (numpy's SeedSequence): independent streams per key."""
    state = np.random.SeedSequence(list(words)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_generator(seed: int, step: int, position: int) -> torch.Generator:
    return keyed_generator(seed, step, position)


@dataclass(frozen=True)
class SampleDraws:
    noise: NoiseDraw  # timestep, noise, offset, perturbation
    drop_caption: torch.Tensor  # [B] bool: train on the empty caption (classifier-free guidance)
    mirror: torch.Tensor  # [B] bool: take the image's mirrored latent (latents.flip)
    posterior: torch.Tensor  # [B, C, h, w] ~ N(0, I): z = mean + std * posterior (sample_posterior)


def draw_samples(
    seed: int,
    step: int,
    positions: range,
    num_train_timesteps: int,
    shape: tuple[int, ...],
    caption_dropout: float,
) -> SampleDraws:
    """The draws of the samples at `positions` of step `step`'s global batch; `shape` is a latent's."""
    noise, uniforms, posterior = [], [], []
    for position in positions:
        g = sample_generator(seed, step, position)
        noise.append(NoiseDraw.sample(g, num_train_timesteps, shape))
        uniforms.append(torch.rand(2, generator=g))
        posterior.append(torch.randn((1, *shape), generator=g))
    u = torch.stack(uniforms)
    return SampleDraws(NoiseDraw.stack(noise), u[:, 0] < caption_dropout, u[:, 1] < 0.5, torch.cat(posterior))
