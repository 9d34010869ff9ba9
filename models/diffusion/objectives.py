"""The U-Net's training objective and its loss (`Objective.loss`): what it predicts, how each sample's error
is weighted, and the noise tricks of the SD trainers (noise offset, input perturbation). Pure tensor code,
no training loop.

Randomness comes in as tensors (`NoiseDraw`), drawn per sample by the caller, so the loss of a sample
depends only on that sample and its draw: not on which process, micro-batch or batch it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr


@dataclass(frozen=True)
class Objective:
    prediction_type: str  # epsilon | v_prediction
    snr_gamma: float | None = None  # min-SNR-gamma weighting (Hang et al. 2023); None: every t weighs 1
    noise_offset: float = 0.0  # + offset * a per-channel constant (Guttenberg 2023): very dark/bright images
    input_perturbation: float = 0.0  # noise the input with eps + p * xi, regress eps (Ning et al. 2023)

    def loss(
        self,
        unet: UNet2DConditionModel,
        scheduler: DDPMScheduler,
        latents: torch.Tensor,
        text_hidden: torch.Tensor,
        text_mask: torch.Tensor,
        draw: NoiseDraw,
    ) -> torch.Tensor:
        """[B] weighted squared error of the U-Net's prediction (Ho et al. 2020, eq. 14, target eps or v).

        latents [B, C, h, w] (already normalised), text_hidden [B, L, D], text_mask [B, L] (1 = real token).
        """
        x0, t = latents.float(), draw.timesteps
        # the noise the model must recover: eps (+ a per-channel offset, so the mean brightness can change)
        noise = draw.noise + self.noise_offset * draw.offset
        # x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) (eps + p xi): input perturbation noises the input a little
        # more than the target says, which narrows the gap between training and sampling inputs
        noisy = scheduler.add_noise(x0, noise + self.input_perturbation * draw.perturbation, t)
        target = prediction_target(scheduler, x0, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text_hidden, encoder_attention_mask=text_mask).sample
        loss = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
        if self.snr_gamma is not None:
            snr = compute_snr(scheduler, t)
            loss = loss * min_snr_weights(snr, self.snr_gamma, self.prediction_type)
        return loss


@dataclass(frozen=True)
class NoiseDraw:
    """A batch's random draws, one row per sample."""

    timesteps: torch.Tensor  # [B] int64
    noise: torch.Tensor  # [B, C, h, w] ~ N(0, I)
    offset: torch.Tensor  # [B, C, 1, 1] ~ N(0, I), scaled by Objective.noise_offset
    perturbation: torch.Tensor  # [B, C, h, w] ~ N(0, I), scaled by Objective.input_perturbation

    @classmethod
    def sample(cls, generator: torch.Generator, num_train_timesteps: int, shape: tuple) -> NoiseDraw:
        """One sample's draws (batch dim 1) from its own generator; `shape` is its latent's [C, h, w]."""
        c = shape[0]
        return cls(
            timesteps=torch.randint(0, num_train_timesteps, (1,), generator=generator),
            noise=torch.randn((1, *shape), generator=generator),
            offset=torch.randn((1, c, 1, 1), generator=generator),
            perturbation=torch.randn((1, *shape), generator=generator),
        )

    @classmethod
    def stack(cls, draws: list[NoiseDraw]) -> NoiseDraw:
        return cls(*(torch.cat([getattr(d, f) for d in draws]) for f in cls.__dataclass_fields__))

    def to(self, device: torch.device) -> NoiseDraw:
        return NoiseDraw(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-timestep loss weights of min-SNR-gamma (Hang et al. 2023, eq. 6), for the given target.

    The paper's weight on the x0 error is min(SNR, gamma). The eps error equals the x0 error times SNR,
    and the v error the x0 error times SNR + 1, so the weights on those are min(SNR, gamma) / SNR and
    min(SNR, gamma) / (SNR + 1). At SNR 0 (zero-terminal-SNR's last step, v only) the v weight is 0 / 1.
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if prediction_type == "epsilon":
        return clipped / snr
    raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")


def prediction_target(
    scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the U-Net regresses: eps, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    return noise
