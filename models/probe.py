"""A small CNN that reads colour and shape off an image, to score whether samples follow their prompt."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.device import pick_device
from models.images import to_model_space


class AttributeProbe(nn.Module):
    """Conv trunk + global average pooling + two linear heads (colour, shape); any resolution >= 16."""

    def __init__(self, num_colors: int, num_shapes: int, width: int = 32):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
            )  # fmt: skip

        self.trunk = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.GroupNorm(8, width),
            nn.SiLU(),  # one conv at full res
            nn.MaxPool2d(2),
            block(width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.color_head = nn.Linear(2 * width, num_colors)
        self.shape_head = nn.Linear(2 * width, num_shapes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 3, H, W] in [-1, 1] -> (colour logits [B, num_colors], shape logits [B, num_shapes])."""
        f = self.trunk(x)  # [B, 2 * width]
        return self.color_head(f), self.shape_head(f)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of x [B, C, H, W] with its own sigma [B] (separable 5-tap Gaussian)."""
    b, c, h, w = x.shape
    r = torch.arange(-2, 3, device=x.device, dtype=x.dtype)  # [5]
    k = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))  # [B, 5]
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, 5]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random blur (half the batch, sigma up to 1.5 px) and Gaussian noise, like imperfect samples."""
    b = x.shape[0]
    sigma = torch.rand(b, generator=gen) * 1.5 * (torch.rand(b, generator=gen) < 0.5)
    x = torch.where(sigma.to(x.device)[:, None, None, None] > 0, _gaussian_blur(x, sigma.to(x.device)), x)
    noise_std = torch.rand(b, 1, 1, 1, generator=gen) * 0.1
    return x + noise_std.to(x.device) * torch.randn(x.shape, generator=gen).to(x.device)


class Images(Protocol):
    """uint8 images [N, H, W, 3]: an array, or anything that indexes like one and reads on demand."""

    def __len__(self) -> int: ...

    def __getitem__(self, which: slice | np.ndarray) -> np.ndarray: ...


def train_probe(
    images: Images,
    color_idx: np.ndarray,
    shape_idx: np.ndarray,
    *,
    steps: int,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> AttributeProbe:
    """Fit the probe on labelled uint8 images [N, H, W, 3] with Adam (cross-entropy on both heads); only a
    batch of them is in model space at a time."""
    if not (len(images) == len(color_idx) == len(shape_idx)) or len(images) == 0:
        raise ValueError(
            f"train_probe needs equal, non-zero counts: {len(images)} images, "
            f"{len(color_idx)} colour labels, {len(shape_idx)} shape labels"
        )
    device = device if isinstance(device, torch.device) else pick_device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    c_all = torch.as_tensor(np.asarray(color_idx), dtype=torch.long)
    s_all = torch.as_tensor(np.asarray(shape_idx), dtype=torch.long)
    probe = AttributeProbe(int(c_all.max()) + 1, int(s_all.max()) + 1).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=2e-3)
    probe.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x = _augment(to_model_space(images[idx.numpy()]).to(device), gen)  # [B, 3, H, W] in [-1, 1]
        color_logits, shape_logits = probe(x)
        loss = F.cross_entropy(color_logits, c_all[idx].to(device)) + F.cross_entropy(
            shape_logits, s_all[idx].to(device)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe.eval()


@torch.no_grad()
def predict_attributes(
    probe: AttributeProbe, images: Images, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, H, W, 3] -> (colour indices [N], shape indices [N])."""
    probe.eval()
    device = next(probe.parameters()).device
    colors, shapes = [], []
    for i in range(0, len(images), batch_size):
        c, s = probe(to_model_space(images[i : i + batch_size]).to(device))
        colors.append(c.argmax(1).cpu())
        shapes.append(s.argmax(1).cpu())
    if not colors:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return torch.cat(colors).numpy(), torch.cat(shapes).numpy()
