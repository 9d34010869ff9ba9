"""The KL-regularised autoencoder (Rombach et al. 2022, sec. 3): builder, loss, PSNR, latent scaling."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def build_vae(
    *,
    block_out_channels: list[int],
    layers_per_block: int,
    norm_num_groups: int,
    latent_channels: int,
    in_channels: int = 3,
) -> AutoencoderKL:
    """A diffusers AutoencoderKL with len(block_out_channels) - 1 downsamplings (f = 2 ** that).

    [32, 64, 64] gives f=4: [B, 3, 32, 32] -> latents [B, latent_channels, 8, 8].
    The latent statistics start neutral; set them from data with `models.sampler.latents.set_normalisation`.
    """
    bad = [c for c in block_out_channels if c % norm_num_groups]
    if bad:
        raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block width, not {bad}")
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        latent_channels=latent_channels,
        scaling_factor=1.0,
    )


def decoder_parameters(vae: AutoencoderKL) -> list[torch.nn.Parameter]:
    """What `vae.finetune: decoder` trains: the decoder and the convolution before it. The encoder stays as
    it is, so every latent it gives (and every cached one) keeps its meaning."""
    return [*vae.decoder.parameters(), *(vae.post_quant_conv.parameters() if vae.post_quant_conv else [])]


class VaeLoss(NamedTuple):
    total: torch.Tensor  # reconstruction + kl_weight * KL
    # L1 + mse_weight * MSE [+ perceptual_weight * LPIPS]: what an adversarial loss is balanced against
    reconstruction: torch.Tensor
    parts: dict[str, float]  # recon_l1, recon_mse, kl [, perceptual]
    images: torch.Tensor  # the reconstructions [B, 3, H, W]


def vae_loss(
    vae: AutoencoderKL,
    images: torch.Tensor,
    kl_weight: float,
    generator: torch.Generator | None = None,
    mse_weight: float = 1.0,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    perceptual_weight: float = 1.0,
) -> VaeLoss:
    """The loss of images [B, 3, H, W] in [-1, 1]:

    |x - x_hat|_1 + mse_weight |x - x_hat|_2^2 (per-pixel means) [+ perceptual_weight * perceptual(x, x_hat),
    batch mean: LPIPS, lpips.py] + kl_weight * KL(q(z|x) || N(0, I)), the KL summed over latent dims
    and averaged over the batch; z is sampled (reparameterisation).
    """
    posterior = vae.encode(images).latent_dist  # diagonal Gaussian over [B, C, h, w]
    z = posterior.sample(generator=generator)
    recon = vae.decode(z).sample  # [B, 3, H, W]
    x, x_hat = images.float(), recon.float()  # losses in fp32 even under bf16 autocast
    l1 = F.l1_loss(x_hat, x)
    mse = F.mse_loss(x_hat, x)
    # KL(N(mu, s^2) || N(0, 1)) = 0.5 * sum(mu^2 + s^2 - 1 - log s^2)   (Kingma & Welling 2014, app. B)
    kl = posterior.kl().float().mean()
    reconstruction = l1 + mse_weight * mse
    parts = {"recon_l1": l1.item(), "recon_mse": mse.item(), "kl": kl.item()}
    if perceptual is not None:
        distance = perceptual(x, x_hat).mean()
        reconstruction = reconstruction + perceptual_weight * distance
        parts["perceptual"] = distance.item()
    return VaeLoss(reconstruction + kl_weight * kl, reconstruction, parts, recon)


def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak range 2): 10 log10(2^2 / MSE)."""
    a_t, b_t = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a_t.shape != b_t.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(a_t.shape)} and {tuple(b_t.shape)}")
    return float(peak_signal_noise_ratio(a_t, b_t, data_range=2.0))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean structural similarity of image batches [N, 3, H, W] in [-1, 1] (torchmetrics' Gaussian SSIM; an
    11-pixel window, shrunk to fit images smaller than that)."""
    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    side = min(a.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)  # odd
    value = structural_similarity_index_measure(a.double(), b.double(), data_range=2.0, kernel_size=kernel)
    return float(value)
