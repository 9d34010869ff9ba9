"""The forward process around the U-Net: the noise schedule training draws from (the objective is in
models/diffusion/objectives.py, sampling in models/sampler/sampling.py)."""

from __future__ import annotations

from diffusers import DDPMScheduler

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
