"""The reverse process: guided DDIM sampling in latent space (the noise schedule is in
models/diffusion/noise_schedule.py)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel


def sampling_scheduler(scheduler_config: dict[str, Any]) -> DDIMScheduler:
    """DDIM on the noise schedule of `scheduler_config` (the one the U-Net was trained with)."""
    # "trailing" spacing starts at t = T-1, which matches pure noise (Lin et al. 2024, sec. 3.3)
    return DDIMScheduler.from_config(scheduler_config, clip_sample=False, timestep_spacing="trailing")


@torch.no_grad()
def sample_latents(
    unet: UNet2DConditionModel,
    scheduler_config: dict[str, Any],
    cond_hidden: torch.Tensor,
    cond_mask: torch.Tensor,
    uncond_hidden: torch.Tensor,
    uncond_mask: torch.Tensor,
    *,
    shape: tuple[int, ...],
    num_inference_steps: int,
    guidance_scale: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reverse process from x_T ~ N(0, I) with DDIM (eta=0) and classifier-free guidance.

    cond_* are [B, L, D] / [B, L]; uncond_* the empty caption's, [B or 1, L, D] / [B or 1, L].
    eps = eps_u + s (eps_c - eps_u)   (Ho & Salimans 2022, eq. 6); s=1 is the plain conditional model,
    s=0 the unconditional one. Returns scaled latents [B, C, h, w] (divide by the VAE scaling factor).
    The initial noise x_T is `noise` [B, C, h, w] when given, else drawn from `generator` (CPU or
    same-device), so a seed fixes the result.
    """
    device = unet.device
    b = shape[0]
    if cond_hidden.shape[0] != b:
        raise ValueError(f"cond_hidden has batch {cond_hidden.shape[0]} but shape asks for {b}")
    scheduler = sampling_scheduler(scheduler_config)
    scheduler.set_timesteps(num_inference_steps, device=device)

    cond_hidden, cond_mask = cond_hidden.to(device), cond_mask.to(device)
    uncond_hidden = uncond_hidden.to(device).expand(b, *cond_hidden.shape[1:])
    uncond_mask = uncond_mask.to(device).expand(b, cond_mask.shape[1])
    # s == 1 and s == 0 need one branch only; otherwise one forward on [uncond; cond] of batch 2B
    if guidance_scale == 1.0:
        hidden, mask = cond_hidden, cond_mask
    elif guidance_scale == 0.0:
        hidden, mask = uncond_hidden, uncond_mask
    else:
        hidden, mask = torch.cat([uncond_hidden, cond_hidden]), torch.cat([uncond_mask, cond_mask])
    dtype = next(unet.parameters()).dtype

    if noise is None:
        if generator is None:
            raise ValueError("sample_latents needs the initial noise or a generator to draw it from")
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    elif tuple(noise.shape) != tuple(shape):
        raise ValueError(f"initial noise has shape {tuple(noise.shape)}, not {tuple(shape)}")
    x = noise.float().to(device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = x if hidden.shape[0] == b else torch.cat([x, x])  # [B or 2B, C, h, w]
        model_in = scheduler.scale_model_input(model_in, t)
        eps = unet(model_in.to(dtype), t, encoder_hidden_states=hidden.to(dtype),
                   encoder_attention_mask=mask).sample.float()  # fmt: skip
        if hidden.shape[0] != b:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        x = scheduler.step(eps, t, x).prev_sample  # DDIM update (Song et al. 2021, eq. 12, eta=0)
    return x
