"""The LDM autoencoder's adversarial part: PatchGAN shapes, the hinge losses, and the adaptive weight that
makes the adversarial term pull on the decoder's last layer as hard as reconstruction does (times its
weight)."""

from __future__ import annotations

import pytest
import torch

from models.autoencoder.discriminator import (
    AdversarialLoss,
    PatchDiscriminator,
    adaptive_weight,
    generator_loss,
    hinge_discriminator_loss,
)
from models.autoencoder.vae import vae_loss


@pytest.mark.parametrize("side, layers, patches", [(32, 3, 2), (64, 3, 6), (32, 2, 6)])
def test_the_patchgan_scores_one_logit_per_patch(side, layers, patches):
    logits = PatchDiscriminator(channels=8, layers=layers)(torch.randn(2, 3, side, side))
    assert logits.shape == (2, 1, patches, patches)


def test_hinge_losses():
    sure = hinge_discriminator_loss(torch.full((4,), 1.5), torch.full((4,), -2.0))
    assert sure.item() == 0.0  # real past +1, fake past -1: nothing to learn
    assert hinge_discriminator_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)
    assert generator_loss(torch.tensor([0.5, 1.5])).item() == pytest.approx(-1.0)


def test_the_adaptive_weight_is_the_ratio_of_gradient_norms_and_a_constant():
    last = torch.randn(3, 4, requires_grad=True)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    weight = adaptive_weight((last * a).sum(), (last * b).sum(), last)
    assert weight.item() == pytest.approx((a.norm() / (b.norm() + 1e-4)).item(), rel=1e-5)
    assert not weight.requires_grad
    assert adaptive_weight((last * a).sum(), (last * b * 1e-12).sum(), last, max_weight=10.0).item() == 10.0


def test_the_adversarial_term_pulls_on_the_last_layer_as_hard_as_reconstruction_times_its_weight(tiny_vae):
    vae = tiny_vae()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    _, reconstruction, _, fakes = vae_loss(vae, x, kl_weight=1e-6)
    adversary = AdversarialLoss(weight=0.5, channels=8, layers=2)
    last = vae.decoder.conv_out.weight
    term, parts = adversary.autoencoder_term(reconstruction, fakes, last)
    (rec_grad,) = torch.autograd.grad(reconstruction, last, retain_graph=True)
    (adv_grad,) = torch.autograd.grad(term, last, retain_graph=True)
    assert adv_grad.norm().item() == pytest.approx(0.5 * rec_grad.norm().item(), rel=1e-3)
    assert set(parts) == {"g_loss", "adaptive_weight"}

    d_loss, game = adversary.discriminator_loss(x, fakes)
    d_loss.backward()  # reaches the discriminator, not the autoencoder (its reconstructions are detached)
    assert all(p.grad is not None for p in adversary.discriminator.parameters())
    assert set(game) == {"d_loss", "logits_real", "logits_fake"}
