import pytest
import torch

from models.diffusion.noise_schedule import make_train_scheduler
from models.sampler.sampling import sample_latents
from models.sampler.unet import build_unet, check_cross_attention_dim


def test_train_scheduler_config():
    s = make_train_scheduler(1000, "scaled_linear")
    assert s.config.clip_sample is False
    assert s.config.prediction_type == "epsilon"
    with pytest.raises(ValueError, match="scaled_linear"):
        make_train_scheduler(1000, "cosine")


def test_add_noise_matches_closed_form():
    s = make_train_scheduler(1000, "scaled_linear")
    x0, eps = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * x0 + (1 - abar).sqrt() * eps  # Ho et al. 2020, eq. 4
    torch.testing.assert_close(s.add_noise(x0, eps, t), expected)


def test_unet_shapes_and_heads(tiny_unet):
    unet = tiny_unet()
    assert unet.config.cross_attention_dim == 16
    assert unet.config.norm_num_groups == 16  # divides [16, 32]
    # attention_head_dim=8 is the per-head width: diffusers' argument holds heads per level
    assert list(unet.config.attention_head_dim) == [2, 4]
    out = unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 500]), encoder_hidden_states=torch.randn(2, 5, 16))
    assert out.sample.shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="attention_head_dim=12"):
        build_unet(sample_size=8, in_channels=4, block_out_channels=[16, 32], layers_per_block=1,
                   attention_head_dim=12, cross_attention_dim=16)  # fmt: skip


def test_check_cross_attention_dim_names_both_numbers(tiny_unet):
    unet = tiny_unet(cross_attention_dim=16)
    check_cross_attention_dim(unet, 16)
    with pytest.raises(ValueError, match=r"cross_attention_dim is 16 .* hidden size is 384"):
        check_cross_attention_dim(unet, 384)


def test_encoder_attention_mask_hides_padding(tiny_unet):
    """Changing hidden states under mask 0 must not change the prediction (1 = attend, 0 = ignore)."""
    unet = tiny_unet().eval()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([100])
    h = torch.randn(1, 6, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    h2 = h.clone()
    h2[:, 3:] = torch.randn(1, 3, 16)
    with torch.no_grad():
        a = unet(x, t, encoder_hidden_states=h, encoder_attention_mask=mask).sample
        b = unet(x, t, encoder_hidden_states=h2, encoder_attention_mask=mask).sample
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _sample(unet, cond, uncond, scale, seed=0, steps=4):
    cfg = make_train_scheduler(1000, "scaled_linear").config
    mask = torch.ones(cond.shape[:2], dtype=torch.long)
    return sample_latents(unet, cfg, cond, mask, uncond, mask[:1], shape=(cond.shape[0], 4, 8, 8),
                          num_inference_steps=steps, guidance_scale=scale,
                          generator=torch.Generator().manual_seed(seed))  # fmt: skip


def test_sample_latents_seeded_and_guidance(tiny_unet):
    unet = tiny_unet().eval()
    torch.manual_seed(1)
    cond, uncond = torch.randn(2, 5, 16), torch.randn(1, 5, 16)
    a = _sample(unet, cond, uncond, 3.0)
    assert a.shape == (2, 4, 8, 8) and torch.isfinite(a).all()
    torch.testing.assert_close(a, _sample(unet, cond, uncond, 3.0), rtol=0, atol=0)  # same seed, same result
    assert not torch.allclose(a, _sample(unet, cond, uncond, 3.0, seed=1))
    # s = 1 is the conditional model alone: equal to guidance with any s when eps_u == eps_c
    c1 = _sample(unet, cond, uncond, 1.0)
    torch.testing.assert_close(c1, _sample(unet, cond, torch.randn(1, 5, 16), 1.0))
    same = cond[:1]
    torch.testing.assert_close(
        _sample(unet, same, same, 1.0), _sample(unet, same, same, 5.0), atol=1e-4, rtol=1e-4
    )
    # s = 0 is the unconditional model alone: the result ignores the prompt
    u0 = _sample(unet, cond, uncond, 0.0)
    torch.testing.assert_close(u0, _sample(unet, torch.randn(2, 5, 16), uncond, 0.0))
    torch.testing.assert_close(u0, _sample(unet, uncond.expand(2, -1, -1), uncond, 1.0))
    assert not torch.allclose(c1, u0)


def test_v_prediction_target_is_the_velocity():
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022); DDIM reads the output as v."""
    s = make_train_scheduler(1000, "scaled_linear", "v_prediction")
    x0, eps, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999])
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(s.get_velocity(x0, eps, t), abar.sqrt() * eps - (1 - abar).sqrt() * x0, atol=1e-5)
    with pytest.raises(ValueError, match="epsilon, v_prediction"):
        make_train_scheduler(1000, "scaled_linear", "sample")


def test_zero_terminal_snr_ends_in_pure_noise_and_needs_v():
    s = make_train_scheduler(1000, "scaled_linear", "v_prediction", zero_terminal_snr=True)
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert make_train_scheduler(1000, "scaled_linear").alphas_cumprod[-1].item() > 1e-4
    with pytest.raises(ValueError, match="zero_terminal_snr needs prediction_type v_prediction"):
        make_train_scheduler(1000, "scaled_linear", "epsilon", zero_terminal_snr=True)
