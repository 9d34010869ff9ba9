"""A small CNN that reads labelled attributes (colour, shape, size, position) off an image, to score whether
samples follow their prompt."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.judges.convnet import conv_trunk, imperfect, trunk_features
from models.sampler.device import pick_device
from models.sampler.images import Images, to_model_space


class AttributeProbe(nn.Module):
    """Conv trunk pooled to a 4 x 4 grid (so it sees where things are, not only what) and one linear head
    per attribute; any resolution >= 16."""

    def __init__(self, classes: dict[str, int], width: int = 32, grid: int = 4) -> None:
        super().__init__()
        self.trunk = conv_trunk(width, pooled_side=grid)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(trunk_features(width, grid), n) for name, n in classes.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x [B, 3, H, W] in [-1, 1] -> {attribute: logits [B, its classes]}."""
        f = self.trunk(x)  # [B, trunk features]
        return {name: head(f) for name, head in self.heads.items()}


def train_probe(
    images: Images,
    labels: dict[str, np.ndarray],
    *,
    steps: int,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> AttributeProbe:
    """Fit the probe on uint8 images [N, H, W, 3] and, per attribute, class indices [N], with Adam (summed
    cross-entropy of the heads); only a batch of images is in model space at a time."""
    counts = {name: len(idx) for name, idx in labels.items()}
    if not labels or len(images) == 0 or any(n != len(images) for n in counts.values()):
        raise ValueError(f"train_probe needs labels for each of the {len(images)} images (got {counts})")
    device = device if isinstance(device, torch.device) else pick_device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    targets = {name: torch.as_tensor(np.array(idx), dtype=torch.long) for name, idx in labels.items()}
    probe = AttributeProbe({name: int(t.max()) + 1 for name, t in targets.items()}).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=2e-3)
    probe.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x = imperfect(to_model_space(images[idx.numpy()]).to(device), gen)  # [B, 3, H, W] in [-1, 1]
        logits = probe(x)
        loss = sum(F.cross_entropy(logits[name], t[idx].to(device)) for name, t in targets.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe.eval()


@torch.no_grad()
def predict_attributes(probe: AttributeProbe, images: Images, batch_size: int = 256) -> dict[str, np.ndarray]:
    """uint8 images [N, H, W, 3] -> {attribute: class indices [N]}."""
    probe.eval()
    device = next(probe.parameters()).device
    found: dict[str, list[torch.Tensor]] = {name: [] for name in probe.heads}
    for i in range(0, len(images), batch_size):
        for name, logits in probe(to_model_space(images[i : i + batch_size]).to(device)).items():
            found[name].append(logits.argmax(1).cpu())
    return {
        name: torch.cat(parts).numpy() if parts else np.zeros(0, dtype=np.int64)
        for name, parts in found.items()
    }
