"""Validation during U-Net training: a loss on held-out latents at fixed timesteps and fixed noise (so
that two evaluations differ only by the weights), and an image grid of fixed held-out prompts and seeds.

The training loss is a poor progress signal: it mixes all noise levels, and the high-noise ones, where
the model can do little, dominate it. The loss at each fixed timestep, the low-noise ones first, moves
with what the model learns. The loss is of the online weights (what the optimiser moves); the grid is
drawn with the EMA weights (what the stage ships).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image

from infra.storage import ObjectStore
from infra.tracking import Run
from models.diffusion.objectives import prediction_target
from models.diffusion.sample_draws import keyed_generator
from models.sampler.images import make_grid, to_uint8
from models.sampler.latents import from_diffusion_space, to_diffusion_space
from models.sampler.sampling import sample_latents
from models.sampler.unet import default_latent_size
from tasks.common.config import ValidationConfig
from tasks.common.content_cache import gather
from tasks.train_unet.data import TrainingSet
from tasks.train_unet.trainer import UnetTraining

BATCH = 64


def validation_generator(seed: int, index: int) -> torch.Generator:
    """Fixed noise for held-out sample `index` (four words: never a training key's three)."""
    return keyed_generator(seed, index, 0, 1)


@dataclass
class HeldOut:
    """Held-out latents (normalised, posterior means) of one shape with their captions' tokens."""

    latents: torch.Tensor  # [N, C, h, w]
    hidden: torch.Tensor  # [N, L, D]
    mask: torch.Tensor  # [N, L]
    noise: torch.Tensor  # [N, C, h, w], fixed


@dataclass
class Validation:
    config: ValidationConfig
    held_out: list[HeldOut]  # one per latent shape
    timesteps: list[int]
    prompts: list[str]
    prompt_hidden: torch.Tensor  # [P, L, D]
    prompt_mask: torch.Tensor
    empty_hidden: torch.Tensor  # [1, L, D]
    empty_mask: torch.Tensor
    normalisation: dict
    vae: AutoencoderKL | None  # None: no grid
    seed: int

    @classmethod
    def load(
        cls,
        v: ValidationConfig,
        data: TrainingSet,  # its held-out rows, caption embeddings and latent normalisation
        store: ObjectStore,
        num_train_timesteps: int,
        vae_dir: Path | None,
        seed: int,
    ) -> Validation:
        val_items, text_row, normalisation = data.held_out, data.text_row, data.normalisation
        items = val_items.head(v.samples)
        held_out = []
        for _, rows in items.groupby("bucket", sort=True):
            refs = [rows[c].tolist() for c in ("shard", "shard_sha256", "shard_index")]
            latents = to_diffusion_space(gather(store, *refs, "mean").float(), normalisation)
            text = torch.tensor([text_row[c] for c in rows["caption"]])
            noise = torch.stack(
                [
                    torch.randn(latents.shape[1:], generator=validation_generator(seed, int(i)))
                    for i in rows.index
                ]
            )
            held_out.append(HeldOut(latents, *data.text(text), noise))
        prompts = sorted(set(val_items["caption"]) - {""})[: v.prompts]
        prompt_hidden, prompt_mask = data.text(torch.tensor([text_row[p] for p in prompts], dtype=torch.long))
        empty_hidden, empty_mask = data.text(slice(data.empty_index, data.empty_index + 1))
        vae = AutoencoderKL.from_pretrained(vae_dir).eval() if vae_dir is not None and prompts else None
        return cls(
            config=v,
            held_out=held_out,
            timesteps=sorted(
                {min(num_train_timesteps - 1, round(f * num_train_timesteps)) for f in v.timesteps}
            ),
            prompts=prompts,
            prompt_hidden=prompt_hidden,
            prompt_mask=prompt_mask,
            empty_hidden=empty_hidden,
            empty_mask=empty_mask,
            normalisation=normalisation,
            vae=vae,
            seed=seed,
        )

    def report(self, training: UnetTraining, step: int, grid: bool, tracker: Run | None) -> dict[str, float]:
        """The held-out loss (online weights) and, with `grid`, the prompts drawn with the EMA weights;
        both logged to `tracker`."""
        found = self.loss(training.model, training.noise_scheduler)
        if tracker:
            tracker.log_metrics(found, step=step)
            if grid and self.vae is not None:
                with training.ema_weights():
                    image = self.grid(training.model, dict(training.noise_scheduler.config))
                tracker.log_image(image, f"validation/step-{step:07d}.png")
        return found

    @torch.no_grad()
    def loss(self, model: UNet2DConditionModel, scheduler: DDPMScheduler) -> dict[str, float]:
        """Mean squared error of the prediction target at each fixed timestep (`val_loss_t<t>`), and their
        mean (`val_loss`); no loss weighting or noise tricks."""
        was_training = model.training
        model.eval()
        out = {}
        for t in self.timesteps:
            errors = torch.cat([_errors(model, scheduler, part, t) for part in self.held_out])
            out[f"val_loss_t{t}"] = errors.mean().item()
        out["val_loss"] = sum(out[f"val_loss_t{t}"] for t in self.timesteps) / len(self.timesteps)
        model.train(was_training)
        return out

    @torch.no_grad()
    def grid(self, model: UNet2DConditionModel, scheduler_config: dict) -> Image.Image | None:
        """The fixed prompts, `images_per_prompt` fixed seeds each, one row per prompt."""
        if self.vae is None:
            return None
        v, device = self.config, model.device
        was_training = model.training
        model.eval()
        n = v.images_per_prompt
        h, w = default_latent_size(model)
        latents = sample_latents(
            model,
            scheduler_config,
            self.prompt_hidden.repeat_interleave(n, 0),
            self.prompt_mask.repeat_interleave(n, 0),
            self.empty_hidden,
            self.empty_mask,
            shape=(len(self.prompts) * n, model.config.in_channels, h, w),
            num_inference_steps=v.inference_steps,
            guidance_scale=v.guidance_scale,
            generator=torch.Generator().manual_seed(self.seed),
        )
        model.train(was_training)
        self.vae.to(device)
        images = self.vae.decode(from_diffusion_space(latents.float(), self.normalisation)).sample
        return make_grid(to_uint8(images), ncols=n)


def _errors(model: UNet2DConditionModel, scheduler: DDPMScheduler, part: HeldOut, t: int) -> torch.Tensor:
    """[N] squared error per held-out sample at timestep t."""
    out = []
    for lo in range(0, len(part.latents), BATCH):
        chunk = slice(lo, lo + BATCH)
        x0, noise = part.latents[chunk].to(model.device), part.noise[chunk].to(model.device)
        ts = torch.full((len(x0),), t, device=model.device, dtype=torch.long)
        target = prediction_target(scheduler, x0, noise, ts)
        hidden, mask = part.hidden[chunk].to(model.device), part.mask[chunk].to(model.device)
        pred = model(scheduler.add_noise(x0, noise, ts), ts, encoder_hidden_states=hidden,
                     encoder_attention_mask=mask).sample  # fmt: skip
        out.append((pred.float() - target).pow(2).mean(dim=(1, 2, 3)).cpu())
    return torch.cat(out)
