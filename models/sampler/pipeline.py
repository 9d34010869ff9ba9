"""Text -> image: encode the prompt, run guided DDIM in latent space, decode with the VAE.

The sampler is a diffusers pipeline, and this module and the ones it imports ship inside every exported
pipeline folder (models/export.py). So they import one another relatively, and nothing else of ldmflow:
diffusers copies beside this file only the modules it imports itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    ImagePipelineOutput,
    UNet2DConditionModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .device import autocast, pick_device
from .images import to_uint8
from .latents import from_diffusion_space
from .sampling import sample_latents, sampling_scheduler
from .text_encoder import encode_captions, load_text_encoder
from .unet import check_cross_attention_dim, default_latent_size


def _read_sampling_config(path_or_dict: str | Path | dict[str, Any]) -> dict[str, Any]:
    cfg = path_or_dict if isinstance(path_or_dict, dict) else json.loads(Path(path_or_dict).read_text())
    missing = {"scheduler", "max_length"} - set(cfg)
    if missing:
        raise ValueError(f"sampling config {path_or_dict!s:.200} lacks keys {sorted(missing)}")
    return cfg


class LatentDiffusionPipeline(DiffusionPipeline):
    """The sampler's parts (VAE, U-Net, tokenizer + text encoder, noise schedule), `generate`, and
    diffusers' `__call__`. Sampling is DDIM (`sampling_scheduler`) whatever schedule trained the U-Net."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: PreTrainedModel,
        scheduler: SchedulerMixin | dict[str, Any],
        max_length: int = 77,
        device: torch.device | str | None = None,
        clip_skip: int = 0,
    ):
        super().__init__()
        check_cross_attention_dim(unet, text_encoder.config.hidden_size)
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(
                f"U-Net in_channels is {unet.config.in_channels} but the VAE has "
                f"{vae.config.latent_channels} latent channels"
            )
        config = scheduler if isinstance(scheduler, dict) else scheduler.config
        self.register_modules(
            vae=vae.eval(),
            unet=unet.eval(),
            tokenizer=tokenizer,
            text_encoder=text_encoder.eval(),
            scheduler=sampling_scheduler(config),
        )
        # the token length, and the text encoder layer the U-Net was trained on (0: the last)
        self.register_to_config(max_length=int(max_length), clip_skip=int(clip_skip))
        if device is not None:
            self.to(torch.device(device))

    @property
    def max_length(self) -> int:
        return self.config.max_length

    @property
    def clip_skip(self) -> int:
        return self.config.clip_skip

    @classmethod
    def from_dirs(
        cls,
        vae_dir: str | Path,
        unet_dir: str | Path,
        text_encoder_dir: str | Path,
        sampling_config_path_or_dict: str | Path | dict[str, Any],
        device: torch.device | str | None = None,
    ) -> LatentDiffusionPipeline:
        """Load the diffusers VAE/U-Net dirs, the transformers encoder dir and the sampling config (the
        parts of a model registered before the pipeline folder): their safetensors and JSON only."""
        device = device if isinstance(device, torch.device) else pick_device(device)
        cfg = _read_sampling_config(sampling_config_path_or_dict)
        tokenizer, text_encoder = load_text_encoder(str(text_encoder_dir), use_safetensors=True)
        return cls(
            vae=AutoencoderKL.from_pretrained(str(vae_dir), use_safetensors=True),
            unet=UNet2DConditionModel.from_pretrained(str(unet_dir), use_safetensors=True),
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            scheduler=cfg["scheduler"],
            max_length=cfg["max_length"],
            device=device,
            clip_skip=cfg.get("clip_skip", 0),  # (models registered before clip_skip read the last layer)
        )

    @classmethod
    def from_folder(
        cls, folder: str | Path, device: torch.device | str | None = None
    ) -> LatentDiffusionPipeline:
        """A pipeline folder this class saved (models/export.py), each part from its subfolder: ldmflow's
        own way in, which reads safetensors and JSON only and runs none of the code shipped in the folder."""
        device = device if isinstance(device, torch.device) else pick_device(device)
        index = json.loads((Path(folder) / "model_index.json").read_text())
        # text_encoder/ beside tokenizer/
        tokenizer, text_encoder = load_text_encoder(str(folder), use_safetensors=True)
        return cls(
            vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True),
            unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True),
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            scheduler=DDIMScheduler.from_pretrained(folder, subfolder="scheduler"),
            max_length=index["max_length"],
            device=device,
            clip_skip=index.get("clip_skip", 0),
        )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        guidance_scale: float = 4.0,
        seed: int = 0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' call: `generate`'s images (the same for the same seed) as PIL images, or uint8 arrays
        [N, H, W, 3] with output_type="np"."""
        images = self.generate(
            [prompt] if isinstance(prompt, str) else list(prompt),
            num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
        )
        if output_type == "pil":
            images = [Image.fromarray(image) for image in images]
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        *,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        guidance_scale: float = 4.0,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """uint8 images [len(prompts) * num_images_per_prompt, H, W, 3], prompt-major; fixed by `seed`.

        Sampled `batch_size` images at a time (default: all at once). The initial noise of every image is
        drawn up front, so a seed gives the same images whatever the batch size."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or num_images_per_prompt < 1:
            raise ValueError("generate needs at least one prompt and num_images_per_prompt >= 1")
        # 1. text: prompts (the empty caption, guidance's unconditional branch, is added in `sample`)
        hidden, mask = self.encode(list(prompts))
        hidden = hidden.repeat_interleave(num_images_per_prompt, 0)  # [N, L, D]
        mask = mask.repeat_interleave(num_images_per_prompt, 0)  # [N, L]

        # 2. the initial noise of every image, drawn up front from the seed
        noise = self.initial_noise(hidden.shape[0], seed)
        return self.sample(hidden, mask, noise, num_inference_steps, guidance_scale, batch_size)

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The text encoder's hidden states [N, L, D] and attention mask [N, L] of `prompts`."""
        return encode_captions(
            self.tokenizer, self.text_encoder, list(prompts), self.max_length, clip_skip=self.clip_skip
        )

    def initial_noise(self, n: int, seed: int) -> torch.Tensor:
        """x_T of `n` images [n, C, h, w], drawn on the CPU so a seed gives the same start on any device."""
        h, w = default_latent_size(self.unet)
        generator = torch.Generator().manual_seed(seed)
        return torch.randn((n, self.unet.config.in_channels, h, w), generator=generator)

    @torch.no_grad()
    def sample(
        self, hidden: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, num_inference_steps: int,
        guidance_scale: float, batch_size: int | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Images uint8 [N, H, W, 3] from prompt embeddings (`encode`) and initial noise, `batch_size` at a
        time (default: all at once): reverse diffusion in latent space from `noise`, guided against the
        empty caption, then the VAE's decode."""
        uncond_hidden, uncond_mask = self.encode([""])
        step = batch_size or len(noise)
        return np.concatenate([
            self._sample_batch(hidden[i : i + step], mask[i : i + step], uncond_hidden, uncond_mask,
                               noise[i : i + step], num_inference_steps, guidance_scale)
            for i in range(0, len(noise), step)
        ])  # fmt: skip

    def _sample_batch(self, hidden, mask, uncond_hidden, uncond_mask, noise, steps, guidance_scale):
        with autocast(self.device):
            latents = sample_latents(
                self.unet,
                self.scheduler.config,
                hidden,
                mask,
                uncond_hidden,
                uncond_mask,
                shape=tuple(noise.shape),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                noise=noise,
            )
        # undo the latent normalisation (statistics in the VAE config) and decode to pixels, in fp32
        latents = from_diffusion_space(latents.float(), self.vae.config)
        images = self.vae.decode(latents.to(self.vae.dtype)).sample  # [B, 3, H, W] in ~[-1, 1]
        return to_uint8(images)
