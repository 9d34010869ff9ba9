"""Device selection and mixed precision: CUDA with bf16 autocast when present, else plain fp32 CPU."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """`prefer` ("cpu", "cuda", "cuda:1", ...) if given, else cuda when available, else cpu."""
    if prefer is None or prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(prefer)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {prefer!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be one of `auto`, `cpu`, `cuda[:N]`, got {prefer!r}")
    return device


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); a no-op on CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
