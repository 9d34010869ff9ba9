import math

import pytest
import torch

from models.sampler.latents import (
    from_diffusion_space,
    posterior_stats,
    set_normalisation,
    to_diffusion_space,
)


def batches():
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1 for _ in range(2)]


def posterior_means(vae):
    with torch.no_grad():
        return torch.cat([vae.encode(b).latent_dist.mean for b in batches()]).double()


def test_global_mode_is_sd_inverse_std(tiny_vae):
    vae = tiny_vae()
    stored = set_normalisation(vae, iter(batches()), "global")
    z = posterior_means(vae)
    assert math.isclose(stored["scaling_factor"], 1 / z.std().item(), rel_tol=1e-4)
    assert vae.config.scaling_factor == stored["scaling_factor"] and vae.config.latents_mean is None
    zn = to_diffusion_space(z.float(), vae.config)
    assert zn.std().item() == pytest.approx(1.0, rel=1e-3)


def test_channel_mode_standardises_each_channel_and_round_trips(tiny_vae):
    vae = tiny_vae()
    set_normalisation(vae, iter(batches()), "channel")
    z = posterior_means(vae).float()
    zn = to_diffusion_space(z, vae.config)
    per_channel = zn.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(z.shape[1]), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(z.shape[1]), atol=1e-3)
    assert torch.allclose(from_diffusion_space(zn, vae.config), z, atol=1e-5)


def test_stats_are_deterministic_and_saved_with_the_model(tiny_vae, tmp_path):
    vae = tiny_vae()
    a = posterior_stats(vae, iter(batches()))
    b = posterior_stats(vae, iter(batches()))
    assert torch.equal(a[0], b[0]) and a[3] == b[3]
    set_normalisation(vae, iter(batches()), "channel")
    vae.save_pretrained(tmp_path)
    from diffusers import AutoencoderKL

    assert AutoencoderKL.from_pretrained(tmp_path).config.latents_std == vae.config.latents_std


def test_unknown_mode_lists_allowed(tiny_vae):
    with pytest.raises(ValueError, match="`channel`, `global`"):
        set_normalisation(tiny_vae(), iter(batches()), "per-pixel")
