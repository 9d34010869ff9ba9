import pytest
import torch

from models.diffusion.noise_schedule import make_train_scheduler
from models.diffusion.objectives import NoiseDraw, Objective, min_snr_weights


def draws(b: int, shape=(4, 8, 8), seed: int = 0) -> NoiseDraw:
    return NoiseDraw.stack(
        [NoiseDraw.sample(torch.Generator().manual_seed(seed + i), 1000, shape) for i in range(b)]
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_equal_the_formula_at_sampled_timesteps(prediction_type):
    s = make_train_scheduler(1000, "scaled_linear", prediction_type)
    t = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(1))
    abar = s.alphas_cumprod.double()[t]
    snr = abar / (1 - abar)  # SNR(t) = alpha_t^2 / sigma_t^2 (Kingma et al. 2021)
    gamma = 5.0
    expected = torch.minimum(snr, torch.full_like(snr, gamma))  # Hang et al. 2023: min(SNR, gamma) on x0
    expected = expected / (snr + 1) if prediction_type == "v_prediction" else expected / snr
    torch.testing.assert_close(min_snr_weights(snr, gamma, prediction_type), expected)
    # high noise (SNR < gamma): eps weight 1; low noise: gamma / SNR < 1
    low, high = snr < gamma, snr >= gamma
    weights = min_snr_weights(snr, gamma, "epsilon")
    assert torch.allclose(weights[low], torch.ones_like(weights[low]))
    assert (weights[high] <= 1).all()


def test_min_snr_weight_of_v_at_zero_terminal_snr_is_finite():
    s = make_train_scheduler(1000, "scaled_linear", "v_prediction", zero_terminal_snr=True)
    abar = s.alphas_cumprod[-1:]
    assert torch.isfinite(min_snr_weights(abar / (1 - abar), 5.0, "v_prediction")).all()


def test_the_loss_is_the_unweighted_mse_without_tricks(tiny_unet):
    unet, s = tiny_unet(), make_train_scheduler(1000, "scaled_linear", "epsilon")
    z, h, mask = torch.randn(3, 4, 8, 8), torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.long)
    d = draws(3)
    loss = Objective("epsilon").loss(unet, s, z, h, mask, d)
    with torch.no_grad():
        pred = unet(s.add_noise(z, d.noise, d.timesteps), d.timesteps, encoder_hidden_states=h,
                    encoder_attention_mask=mask).sample  # fmt: skip
    torch.testing.assert_close(loss.detach(), (pred - d.noise).pow(2).mean(dim=(1, 2, 3)))
    loss.mean().backward()
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)


def test_a_samples_loss_depends_on_its_own_draw_only(tiny_unet):
    """So that splitting a batch across processes or micro-batches changes nothing."""
    unet, s = tiny_unet().eval(), make_train_scheduler(1000, "scaled_linear", "v_prediction")
    z, h, mask = torch.randn(4, 4, 8, 8), torch.randn(4, 5, 16), torch.ones(4, 5, dtype=torch.long)
    objective = Objective("v_prediction", snr_gamma=5.0, noise_offset=0.1, input_perturbation=0.1)
    d = draws(4)
    with torch.no_grad():
        whole = objective.loss(unet, s, z, h, mask, d)
        halves = [
            objective.loss(unet, s, z[i : i + 2], h[i : i + 2], mask[i : i + 2],
                           NoiseDraw(*(getattr(d, f)[i : i + 2] for f in NoiseDraw.__dataclass_fields__)))
            for i in (0, 2)
        ]  # fmt: skip
    torch.testing.assert_close(whole, torch.cat(halves), rtol=1e-5, atol=1e-6)


def test_noise_offset_and_input_perturbation_change_what_the_model_sees(tiny_unet):
    unet, s = tiny_unet().eval(), make_train_scheduler(1000, "scaled_linear", "epsilon")
    z, h, mask = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.long)
    d = draws(2)
    with torch.no_grad():
        plain = Objective("epsilon").loss(unet, s, z, h, mask, d)
        offset = Objective("epsilon", noise_offset=0.5).loss(unet, s, z, h, mask, d)
        perturbed = Objective("epsilon", input_perturbation=0.5).loss(unet, s, z, h, mask, d)
    assert not torch.allclose(plain, offset) and not torch.allclose(plain, perturbed)
