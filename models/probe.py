"""A small CNN that reads colour and shape off an image, to score whether samples follow their prompt."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.convnet import conv_trunk, imperfect, trunk_features
from models.device import pick_device
from models.images import Images, to_model_space


class AttributeProbe(nn.Module):
    """Conv trunk + global average pooling + two linear heads (colour, shape); any resolution >= 16."""

    def __init__(self, num_colors: int, num_shapes: int, width: int = 32):
        super().__init__()

        self.trunk = conv_trunk(width, pooled_side=1)  # global average: colour and shape only
        self.color_head = nn.Linear(trunk_features(width, 1), num_colors)
        self.shape_head = nn.Linear(trunk_features(width, 1), num_shapes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 3, H, W] in [-1, 1] -> (colour logits [B, num_colors], shape logits [B, num_shapes])."""
        f = self.trunk(x)  # [B, trunk features]
        return self.color_head(f), self.shape_head(f)


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
        x = imperfect(to_model_space(images[idx.numpy()]).to(device), gen)  # [B, 3, H, W] in [-1, 1]
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
