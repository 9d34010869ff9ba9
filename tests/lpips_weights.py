"""LPIPS weight files as a user brings them, with random values: torchvision's VGG16 state dict
(`features.N`, and the classifier LPIPS leaves out) and the `lpips` package's heads (`linK.model.1.*`)."""

from __future__ import annotations

from pathlib import Path

import torch

from models.autoencoder.lpips import WIDTHS, vgg16_features


def write_lpips_weights(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    backbone = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    backbone["classifier.6.bias"] = torch.zeros(1000)  # torchvision's file goes on past the features
    torch.save(backbone, folder / "vgg16-397923af.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, w, 1, 1) for i, w in enumerate(WIDTHS)}
    torch.save(heads, folder / "vgg.pth")
    return folder
