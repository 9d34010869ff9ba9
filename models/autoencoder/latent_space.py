"""A VAE's latent space, measured: held-out images encoded to the diffusion model's normalised space, a
2-D projection of them, per-channel statistics, and decodes of random points beside decodes of real ones.

A VAE's KL term keeps its latent space continuous and complete: random N(0, I) points (in the normalised
space the U-Net works in) should decode to plausible images, where a plain autoencoder's would decode to
noise. The decodes of random points beside real ones show which one a trained VAE is.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from diffusers import AutoencoderKL

from models.sampler.images import to_model_space, to_uint8
from models.sampler.latents import from_diffusion_space, to_diffusion_space


@torch.no_grad()
def encode_normalised(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Posterior means of uint8 images [N, H, W, 3] in the normalised space: float32 [N, C, h, w]."""
    device = next(vae.parameters()).device
    parts = []
    for start in range(0, len(images), batch_size):
        pixels = to_model_space(images[start : start + batch_size]).to(device, vae.dtype)
        z = vae.encode(pixels).latent_dist.mean.float()
        parts.append(to_diffusion_space(z, vae.config).cpu())
    return torch.cat(parts)


@torch.no_grad()
def decode_normalised(vae: AutoencoderKL, latents: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Normalised latents [N, C, h, w] -> uint8 images [N, H, W, 3] (de-normalised as the VAE expects)."""
    device = next(vae.parameters()).device
    parts = []
    for start in range(0, len(latents), batch_size):
        z = from_diffusion_space(latents[start : start + batch_size].float(), vae.config)
        parts.append(to_uint8(vae.decode(z.to(device, vae.dtype)).sample))
    return np.concatenate(parts)


def random_latents(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """`n` draws from N(0, I) of shape [C, h, w]: the points the U-Net starts sampling from."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def channel_stats(latents: torch.Tensor) -> dict[str, list[float]]:
    """Mean and std of each latent channel over images and positions (about 0 and 1 when the
    normalisation fits the data)."""
    per_channel = latents.double().transpose(0, 1).flatten(1)  # [C, N*h*w]
    return {"mean": per_channel.mean(1).tolist(), "std": per_channel.std(1).tolist()}


def project_2d(latents: torch.Tensor, method: Literal["pca", "umap"] = "pca", seed: int = 0) -> np.ndarray:
    """[N, 2] coordinates of flattened latents: the two leading principal components, or UMAP's (which
    needs the `umap-learn` package)."""
    x = latents.double().flatten(1)
    if len(x) < 3:
        raise ValueError(f"a projection needs at least 3 latents, got {len(x)}")
    if method == "umap":
        import umap  # optional: only where installed

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x.numpy())
    centred = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v[:2].T).numpy()


def umap_installed() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def reconstruct(vae: AutoencoderKL, images: np.ndarray) -> np.ndarray:
    """uint8 images [N, H, W, 3] through the autoencoder (the posterior's mean, decoded), uint8 again."""
    return decode_normalised(vae, encode_normalised(vae, images))
