"""The LDM autoencoder's adversarial part (Rombach et al. 2022, app. G; Esser et al. 2021, sec. 3.2): a
PatchGAN discriminator that scores overlapping patches of an image real or reconstructed, its hinge
losses, and the adaptive weight that balances the generator's adversarial loss against reconstruction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN (Isola et al. 2017): `layers` stride-2 4x4 convolutions, then two stride-1 ones;
    one logit per patch, [B, 1, h, w]. Each logit sees a receptive field of 70 px at layers=3."""

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        width = [channels * min(2**n, 8) for n in range(layers + 1)]
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for n in range(1, layers + 1):
            stride = 2 if n < layers else 1
            blocks += [
                nn.Conv2d(width[n - 1], width[n], 4, stride, 1, bias=False),
                nn.BatchNorm2d(width[n]),
                nn.LeakyReLU(0.2),
            ]
        blocks.append(nn.Conv2d(width[layers], 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():  # pix2pix's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]): zero once real patches score >= 1 and fakes <= -1."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(x_hat)]: the autoencoder gains by making its reconstructions score as real."""
    return -fake_logits.mean()


def adaptive_weight(
    reconstruction: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """||grad_L rec|| / (||grad_L adv|| + 1e-4) at the decoder's last layer L (Esser et al. 2021, eq. 7):
    the adversarial loss then pulls on the decoder about as hard as reconstruction does. A constant (no
    gradient flows through it), clamped to [0, max_weight]."""
    rec_grad = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (adv_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


class AdversarialLoss(nn.Module):
    """The discriminator and both sides of its game, as the LDM autoencoder plays it: the autoencoder's term
    weight x adaptive weight x generator loss, and the discriminator's hinge loss."""

    def __init__(self, weight: float, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.weight = weight
        self.discriminator = PatchDiscriminator(channels, layers)

    def autoencoder_term(
        self, reconstruction: torch.Tensor, fakes: torch.Tensor, last_layer: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """What the autoencoder adds to its loss for reconstructions `fakes`, whose reconstruction loss is
        `reconstruction` and whose decoder ends in `last_layer`."""
        g_loss = generator_loss(self.discriminator(fakes).float())
        balance = adaptive_weight(reconstruction, g_loss, last_layer)
        return self.weight * balance * g_loss, {"g_loss": g_loss.item(), "adaptive_weight": balance.item()}

    def discriminator_loss(self, reals: torch.Tensor, fakes: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The discriminator's hinge loss on real images and (detached) reconstructions."""
        real_logits = self.discriminator(reals).float()
        fake_logits = self.discriminator(fakes.detach()).float()
        loss = hinge_discriminator_loss(real_logits, fake_logits)
        return loss, {"d_loss": loss.item(), "logits_real": real_logits.mean().item(),
                      "logits_fake": fake_logits.mean().item()}  # fmt: skip
