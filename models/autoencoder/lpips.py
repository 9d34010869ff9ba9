"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), the
perceptual term of the LDM paper's autoencoder loss, from weights on disk.

The well-kept implementations (the `lpips` package, torchmetrics') build the VGG16 backbone with
torchvision and download its ImageNet weights on first use. ldmflow has neither torchvision nor the
network at run time, so the same network is built here and both weight files are read from a folder the
user names (`vae.lpips_weights`):
- torchvision's VGG16 ImageNet weights (`vgg16-397923af.pth`: keys `features.N.weight`, `features.N.bias`);
- the LPIPS v0.1 linear heads for VGG (the `lpips` package's `weights/v0.1/vgg.pth`: `linK.model.1.weight`).
The module is frozen: it only scores. Inputs are images in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# VGG16's feature layers (torchvision's `cfg "D"`): convolution widths, "M" a 2x2 max pool
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAPS = (3, 8, 15, 22, 29)  # the ReLU outputs LPIPS compares: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
WIDTHS = (64, 128, 256, 512, 512)
# the LPIPS input scaling, from [-1, 1] to what the ImageNet VGG expects
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    """VGG16's `features` up to relu5_3, numbered as torchvision numbers them (so its weights load)."""
    layers: list[nn.Module] = []
    channels = 3
    for width in VGG16:
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """d(x, y) = sum over taps l of mean over (h, w) of |w_l * (f_l(x) - f_l(y))|^2, with f_l the tap's
    features unit-normalised over channels and w_l its learned non-negative channel weights: [N]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.heads = nn.ModuleList(nn.Conv2d(width, 1, 1, bias=False) for width in WIDTHS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS needs images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        taps = self._taps(torch.cat([x, y]).float())
        n = len(x)
        pairs = zip(self.heads, taps, strict=True)
        per_tap = [head((f[:n] - f[n:]) ** 2).mean((1, 2, 3)) for head, f in pairs]
        return torch.stack(per_tap).sum(0)

    @classmethod
    def from_folder(cls, folder: str | Path) -> LPIPS:
        """The network with the two weight files found in `folder` (see the module's doc)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"vae.lpips_weights: {folder} is not a folder")
        model = cls()
        backbone = heads = None
        for path in sorted(folder.iterdir()):
            if path.suffix not in (".pth", ".pt", ".safetensors"):
                continue
            state = _load_state(path)
            if "features.0.weight" in state:  # beside `classifier.*`, which LPIPS leaves out
                backbone = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
            elif "lin0.model.1.weight" in state:
                heads = {f"{i}.weight": state[f"lin{i}.model.1.weight"] for i in range(len(WIDTHS))}
        if backbone is None or heads is None:
            lacking = "VGG16 weights (features.N.*)" if backbone is None else "LPIPS heads (linK.model.1.*)"
            raise FileNotFoundError(f"vae.lpips_weights: no file of {folder} holds the {lacking}")
        model.features.load_state_dict(backbone)
        model.heads.load_state_dict(heads)
        return model


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: never unpickles code
    if not isinstance(state, dict):
        raise ValueError(f"vae.lpips_weights: {path} holds a {type(state).__name__}, not a state dict")
    return state
