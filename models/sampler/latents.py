"""Latents: what a latent cache stores of an image (the posterior mean and std, `posterior_fp16`), and
their normalisation: VAE latents <-> the ~N(0, I) space the diffusion model works in.

The statistics live in the VAE's own config, with diffusers' AutoencoderKL fields and convention:
- per channel (`latents_mean`, `latents_std` set):  z_n = (z - mean_c) * scaling_factor / std_c
- global, Stable Diffusion style (neither set):      z_n = (z - shift_factor) * scaling_factor
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL


@torch.no_grad()
def posterior_stats(
    vae: AutoencoderKL, images_iter: Iterable[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(mean [C], std [C], global mean, global std) of the posterior means E[z|x] over the batches.

    Means, not samples z ~ q(z|x): a small VAE trained for minutes keeps a large posterior std, and
    samples would mix that noise into the statistics (and into what the U-Net learns; see train_unet).
    """
    # each batch [B, C, h, w] -> [C, B*h*w]: batches may differ in h, w (aspect-ratio buckets)
    zs = [vae.encode(x).latent_dist.mean.double().cpu().transpose(0, 1).flatten(1) for x in images_iter]
    if not zs:
        raise ValueError("posterior_stats needs at least one batch of images")
    z = torch.cat(zs, dim=1)  # [C, N*h*w]
    return z.mean(1).float(), z.std(1).float(), z.mean().item(), z.std().item()


def set_normalisation(
    vae: AutoencoderKL, images_iter: Iterable[torch.Tensor], mode: Literal["channel", "global"]
) -> dict[str, Any]:
    """Estimate the statistics on data and store them in the VAE's config; return what was stored.

    "global" is Stable Diffusion's recipe: scaling_factor = 1 / std (their 0.18215), no shift.
    "channel" standardises each channel, for small VAEs whose channels differ a lot in mean and spread.
    """
    mean, std, _, global_std = posterior_stats(vae, images_iter)
    if mode == "channel":
        stored = {"scaling_factor": 1.0, "latents_mean": mean.tolist(), "latents_std": std.tolist()}
    elif mode == "global":
        stored = {"scaling_factor": 1.0 / global_std, "latents_mean": None, "latents_std": None}
    else:
        raise ValueError(f"latent normalisation must be one of `channel`, `global`, got {mode!r}")
    vae.register_to_config(shift_factor=None, **stored)
    return stored


def _stats(config: Any, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:
        shape = (1, -1, 1, 1)
        mean = torch.tensor(config["latents_mean"], dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(config["latents_std"], dtype=like.dtype, device=like.device).view(shape)
        return mean, std
    return float(config.get("shift_factor") or 0.0), 1.0


def to_diffusion_space(z: torch.Tensor, vae_config: Any) -> torch.Tensor:
    """VAE latents [B, C, h, w] -> normalised latents (what the U-Net is trained on)."""
    mean, std = _stats(vae_config, z)
    return (z - mean) * vae_config["scaling_factor"] / std


def from_diffusion_space(z: torch.Tensor, vae_config: Any) -> torch.Tensor:
    """Normalised latents -> VAE latents, ready for `vae.decode`."""
    mean, std = _stats(vae_config, z)
    return z * std / vae_config["scaling_factor"] + mean


@torch.no_grad()
def posterior_fp16(vae: AutoencoderKL, pixels: torch.Tensor, flip: bool) -> dict[str, torch.Tensor]:
    """What a latent shard holds for these pixels: posterior `mean` and `std` in float16 on the CPU, and
    with `flip` those of the mirrored images too."""
    variants = {"": pixels, "_flip": pixels.flip(-1)} if flip else {"": pixels}
    out = {}
    for suffix, x in variants.items():
        posterior = vae.encode(x).latent_dist
        out[f"mean{suffix}"], out[f"std{suffix}"] = posterior.mean.half().cpu(), posterior.std.half().cpu()
    return out
