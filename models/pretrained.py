"""Pretrained diffusers parts: a model's own folder, a pipeline folder holding it (Stable Diffusion's
`vae/`, `unet/`), or a hub id (its pipeline's subfolder, where there is a network)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from diffusers import AutoencoderKL, ModelMixin, UNet2DConditionModel

M = TypeVar("M", bound=ModelMixin)


def load_part(cls: type[M], source: str, part: str, setting: str) -> M:
    """`cls` from `source`: a folder with its config.json, or with `part/config.json`; or a hub id's `part`.
    `setting` names the parameter in errors (e.g. `vae.pretrained`)."""
    path = Path(source)
    if path.is_dir():
        subfolder = part if (path / part / "config.json").is_file() else None
        if subfolder is None and not (path / "config.json").is_file():
            raise FileNotFoundError(f"{setting}={source}: no config.json there or in {part}/")
        return cls.from_pretrained(path, subfolder=subfolder)
    return cls.from_pretrained(source, subfolder=part)


def load_pretrained_vae(source: str) -> AutoencoderKL:
    """An AutoencoderKL from its folder, a pipeline folder with `vae/` (Stable Diffusion's), or a hub id."""
    return load_part(AutoencoderKL, source, "vae", "vae.pretrained")


def load_pretrained_unet(source: str) -> UNet2DConditionModel:
    """A diffusers U-Net from a local dir (the U-Net's own, or a pipeline's with `unet/`), or a hub id."""
    return load_part(UNet2DConditionModel, source, "unet", "unet.pretrained")
