"""The diffusion process around the U-Net: the noise schedule and guided DDIM sampling (the training
objective is in models/objectives.py)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


PREDICTION_TYPES = ("epsilon", "v_prediction")


def make_train_scheduler(
    num_train_timesteps: int,
    beta_schedule: str,
    prediction_type: str = "epsilon",
    zero_terminal_snr: bool = False,
) -> DDPMScheduler:
    """The forward process q(x_t | x_0) for training, and what the U-Net predicts (no x0 clipping).

    clip_sample=False: clipping the predicted x0 to [-1, 1] suits pixels, not scaled latents.
    zero_terminal_snr rescales the betas so that the last step is pure noise (Lin et al. 2024, sec. 3.1):
    the model then learns to start from what sampling starts from. It needs v-prediction (eps carries no
    information about x0 at SNR 0).
    """
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise ValueError("zero_terminal_snr needs prediction_type v_prediction (Lin et al. 2024, sec. 3.2)")
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {beta_schedule!r}")
    if prediction_type not in PREDICTION_TYPES:
        allowed = ", ".join(PREDICTION_TYPES)
        raise ValueError(f"prediction_type must be one of {allowed}, got {prediction_type!r}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=False,
        rescale_betas_zero_snr=zero_terminal_snr,
    )


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
    generator: torch.Generator,
) -> torch.Tensor:
    """Reverse process from x_T ~ N(0, I) with DDIM (eta=0) and classifier-free guidance.

    cond_* are [B, L, D] / [B, L]; uncond_* the empty caption's, [B or 1, L, D] / [B or 1, L].
    eps = eps_u + s (eps_c - eps_u)   (Ho & Salimans 2022, eq. 6); s=1 is the plain conditional model,
    s=0 the unconditional one. Returns scaled latents [B, C, h, w] (divide by the VAE scaling factor).
    The initial noise comes from `generator` (CPU or same-device), so a seed fixes the result.
    """
    device = unet.device
    b = shape[0]
    if cond_hidden.shape[0] != b:
        raise ValueError(f"cond_hidden has batch {cond_hidden.shape[0]} but shape asks for {b}")
    # "trailing" spacing starts at t = T-1, which matches pure noise (Lin et al. 2024, sec. 3.3)
    scheduler = DDIMScheduler.from_config(scheduler_config, clip_sample=False, timestep_spacing="trailing")
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

    x = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)
    x = x * scheduler.init_noise_sigma
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
