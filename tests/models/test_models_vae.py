import math

import pytest
import torch

from models.autoencoder.vae import build_vae, psnr, ssim, vae_loss


def test_vae_f4_shapes_and_config():
    torch.manual_seed(0)
    vae = build_vae(
        block_out_channels=[32, 64, 64], layers_per_block=1, norm_num_groups=16, latent_channels=4
    )
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        assert z.shape == (2, 4, 8, 8)  # f = 4
        assert vae.decode(z).sample.shape == x.shape
    assert vae.config.scaling_factor == 1.0  # set from data later, never a hard-coded constant


def test_vae_loss_decreases_on_fixed_batch(tiny_vae):
    vae = tiny_vae()
    torch.manual_seed(0)
    # smooth images (a few coloured blocks) so 30 steps show progress
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4) * 2 - 1, size=32, mode="nearest")
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss, _, parts, recon = vae_loss(vae, x, kl_weight=1e-6, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(parts) == {"recon_l1", "recon_mse", "kl"} and recon.shape == x.shape
    assert all(math.isfinite(v) for v in parts.values())
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5, losses


def test_psnr():
    a = torch.rand(4, 3, 8, 8) * 2 - 1
    assert psnr(a, a) == math.inf
    noise = torch.rand(4, 3, 8, 8) * 2 - 1
    assert psnr(a, noise) < 10
    assert psnr(a, a + 0.01) > 40


def test_ssim_is_one_for_equal_images_and_falls_with_noise_at_any_size():
    torch.manual_seed(0)
    for side in (8, 16, 32):  # below SSIM's 11-pixel window the window shrinks to fit
        x = torch.rand(4, 3, side, side) * 2 - 1
        noisy = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
        assert ssim(x, x) == pytest.approx(1.0)
        assert 0 < ssim(x, noisy) < ssim(x, (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)) < 1
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(x, x[:2])
