"""The U-Net and what trains it, on Accelerate: one process here, many under `accelerate launch` or
`torchrun` (DDP; gloo on CPU, NCCL on GPUs), bf16 autocast on CUDA, gradient accumulation.

`UnetTraining.step` takes this process's micro-batches of one global batch. The loss of each sample is
a mean over its own draws (models/diffusion/sample_draws.py) and the global loss a mean over samples, so the
weights after a step do not depend on how the global batch was split over processes and micro-batches.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from infra.launch import launched_distributed
from models.diffusion.noise_schedule import make_train_scheduler
from models.diffusion.objectives import NoiseDraw, Objective
from models.pretrained import load_pretrained_unet
from models.sampler.unet import build_unet, check_unet_fits
from tasks.common.config import UnetConfig


def make_accelerator(u: UnetConfig) -> Accelerator:
    """The Accelerator for the configured precision and accumulation; CPU (gloo) when there is no GPU."""
    if not launched_distributed():  # one process may train several times (tests, notebooks): start clean
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    cuda = torch.cuda.is_available()
    precision = u.mixed_precision
    if precision == "auto":  # bf16 needs no loss scaling; CPUs gain nothing from it here
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if precision != "no" and not cuda:
        raise ValueError(f"unet.mixed_precision={precision} needs a CUDA GPU; use auto or no on CPU")
    return Accelerator(
        mixed_precision=precision, gradient_accumulation_steps=u.gradient_accumulation, cpu=not cuda
    )


@dataclass(frozen=True)
class MicroBatch:
    latents: torch.Tensor  # [B, C, h, w] normalised
    hidden: torch.Tensor  # [B, L, D]
    mask: torch.Tensor  # [B, L]
    draw: NoiseDraw


@dataclass
class UnetTraining:
    accelerator: Accelerator
    model: UNet2DConditionModel  # the bare model (EMA, checkpoints, saving)
    unet: torch.nn.Module  # what trains: the model, compiled and DDP-wrapped as configured
    ema: EMAModel | None  # kept by the main process only
    noise_scheduler: DDPMScheduler
    objective: Objective
    opt: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LRScheduler
    max_grad_norm: float

    @classmethod
    def build(
        cls,
        u: UnetConfig,
        accelerator: Accelerator,
        latent_shape: tuple[int, ...],
        cross_attention_dim: int,
    ) -> UnetTraining:
        """The U-Net (pretrained, or built from params to sample latents of `latent_shape` (C, h, w) by
        default), its EMA, optimiser, LR schedule and noise schedule, prepared by the accelerator."""
        in_channels, h, w = latent_shape
        if u.pretrained:
            model = load_pretrained_unet(u.pretrained)
        else:
            model = build_unet(
                sample_size=h if h == w else (h, w),
                in_channels=in_channels,
                block_out_channels=u.block_out_channels,
                layers_per_block=u.layers_per_block,
                attention_head_dim=u.attention_head_dim,
                cross_attention_dim=cross_attention_dim,
                pooled_text_embedding=u.pooled_text_embedding,
            )
        check_unet_fits(model, in_channels, cross_attention_dim)
        model.set_attn_processor(AttnProcessor2_0() if u.attention == "sdpa" else AttnProcessor())
        if u.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.to(accelerator.device).train()
        ema = None
        if accelerator.is_main_process:
            ema = EMAModel(
                model.parameters(), decay=u.ema_decay, use_ema_warmup=u.ema_warmup, power=u.ema_power
            )
        opt = torch.optim.AdamW(model.parameters(), lr=u.lr, weight_decay=u.weight_decay)
        schedule = "cosine" if u.lr_schedule == "cosine" else "constant_with_warmup"
        lr_schedule = get_scheduler(
            schedule, opt, num_warmup_steps=u.warmup_steps, num_training_steps=u.steps
        )
        unet = torch.compile(model) if u.compile else model
        unet, opt = accelerator.prepare(unet, opt)  # the LR schedule steps once a global step, by us
        noise_scheduler = make_train_scheduler(
            u.num_train_timesteps, u.beta_schedule, u.prediction_type, u.zero_terminal_snr
        )
        objective = Objective(u.prediction_type, u.snr_gamma, u.noise_offset, u.input_perturbation)
        return cls(
            accelerator, model, unet, ema, noise_scheduler, objective, opt, lr_schedule, u.max_grad_norm
        )

    def step(self, micro_batches: list[MicroBatch]) -> float:
        """One optimisation step on this process's micro-batches of a global batch; the global mean loss."""
        acc = self.accelerator
        losses = []
        for mb in micro_batches:
            with acc.accumulate(self.unet):  # gradients sync (DDP) and the optimiser steps on the last one
                # a loss per sample [B] (models/diffusion/objectives.py), then the micro-batch's mean
                loss = self.objective.loss(
                    self.unet, self.noise_scheduler, mb.latents.to(acc.device), mb.hidden.to(acc.device),
                    mb.mask.to(acc.device), mb.draw.to(acc.device),
                ).mean()  # fmt: skip
                acc.backward(loss)  # divided by the accumulation steps
                if acc.sync_gradients and self.max_grad_norm:
                    acc.clip_grad_norm_(self.unet.parameters(), self.max_grad_norm)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        self.lr_schedule.step()
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        return acc.reduce(torch.stack(losses).mean(), "mean").item()

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """The model holds the EMA weights inside the block, its own again after it."""
        self.ema.store(self.model.parameters())
        self.ema.copy_to(self.model.parameters())
        try:
            yield
        finally:
            self.ema.restore(self.model.parameters())

    def save_model(self, out: Path) -> None:
        """The EMA weights as a diffusers model dir, and the noise schedule they were trained with under
        `scheduler/` (main process)."""
        self.ema.copy_to(self.model.parameters())
        out.mkdir(parents=True, exist_ok=True)
        self.model.to("cpu").save_pretrained(out, safe_serialization=True)
        self.noise_scheduler.save_pretrained(out / "scheduler")

    # ------------------------------------------------------------------------------ checkpoint state
    def save_state(self, folder: Path) -> dict[str, Path]:
        """Write the model and the training state (main process); returns the files by name."""
        folder.mkdir(parents=True, exist_ok=True)
        files = {"unet.safetensors": folder / "unet.safetensors", "state.pt": folder / "state.pt"}
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, files["unet.safetensors"])
        scaler = self.accelerator.scaler
        torch.save(
            {
                "optimizer": self.opt.state_dict(),
                "lr_schedule": self.lr_schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
            },
            files["state.pt"],
        )
        return files

    def read_state(self, folder: Path) -> tuple[dict, dict]:
        """The model weights and the training state saved in `folder`, read (and so checked) before any
        of it is applied."""
        device = self.accelerator.device  # `cpu:0` under DDP on CPUs: a name neither loader restores to
        where = "cpu" if device.type == "cpu" else str(device)
        weights = load_file(folder / "unet.safetensors", device=where)
        # tensors, numbers and containers only: a checkpoint in a shared bucket must not run code
        state = torch.load(folder / "state.pt", map_location=where, weights_only=True)
        return weights, state

    def load_state(self, weights: dict, state: dict) -> None:
        """Every process loads the model and optimiser (DDP replicas step alike); EMA on the main one."""
        self.model.load_state_dict(weights)
        self.opt.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        if self.accelerator.scaler is not None and state["scaler"] is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


def rng_state() -> dict:
    """This process's global RNG states (random, numpy, torch, CUDA) as JSON-able lists and numbers: a
    checkpoint's RNG state is read back as data, never unpickled."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(words), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
