"""train_vae from a pretrained AutoencoderKL (its own folder, or an SD pipeline folder's vae/): validated
as it is (`finetune: none`, weights untouched), its decoder fine-tuned (the encoder untouched, so cached
latents keep their meaning), or all of it; latent statistics from its config unless `rescale`."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL

from models.autoencoder.vae import build_vae
from models.fingerprint import module_fingerprint
from tasks.common.config import config_from_dict
from tasks.ingest.stage import run_ingest
from tasks.train_vae import run_train_vae

DATA = {"resolution": 16, "val_fraction": 0.25, "synthetic": {"count": 32}}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ingested"
    run_ingest(config_from_dict({"data": DATA}), out)
    return out


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A pipeline folder whose vae/ is SD-style: a global scaling factor 0.18215, no per-channel stats."""
    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    vae = build_vae(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4)
    vae.register_to_config(scaling_factor=0.18215)
    vae.save_pretrained(root / "vae")
    return root


def _train(ingested, out, **vae):
    cfg = config_from_dict({"data": DATA, "vae": {"steps": 3, "batch_size": 4, **vae}})
    return run_train_vae(cfg, ingested, out)


def _parts(vae: AutoencoderKL) -> dict[str, str]:
    return {name: module_fingerprint(getattr(vae, name)) for name in ("encoder", "quant_conv", "decoder")}


def test_finetune_none_validates_the_vae_as_it_is(ingested, sd_folder, tmp_path):
    before = AutoencoderKL.from_pretrained(sd_folder / "vae")
    metrics = _train(ingested, tmp_path / "vae", pretrained=str(sd_folder), finetune="none")
    after = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert module_fingerprint(after) == module_fingerprint(before)
    assert metrics["steps"] == 0 and metrics["finetune"] == "none" and metrics["scaling_factor"] == 0.18215
    assert "latents_mean" not in metrics  # SD's global factor, as its config says
    assert -1 <= metrics["val_ssim"] <= 1 and metrics["val_psnr"] > 0  # an untrained VAE: near 0
    assert len(metrics["val_latent_mean"]) == len(metrics["val_latent_std"]) == 4
    on_disk = json.loads((tmp_path / "vae" / "metrics.json").read_text())
    assert on_disk["val_ssim"] == metrics["val_ssim"]


def test_finetune_decoder_keeps_the_encoder_and_rescale_fits_the_data(ingested, sd_folder, tmp_path):
    before = _parts(AutoencoderKL.from_pretrained(sd_folder / "vae"))
    metrics = _train(ingested, tmp_path / "vae", pretrained=str(sd_folder / "vae"), finetune="decoder",
                     rescale=True, latent_norm="channel")  # fmt: skip
    after = _parts(AutoencoderKL.from_pretrained(tmp_path / "vae"))
    assert after["encoder"] == before["encoder"] and after["quant_conv"] == before["quant_conv"]
    assert after["decoder"] != before["decoder"] and metrics["steps"] == 3
    # per-channel statistics estimated on the train split: the held-out latents come out near 0 and 1
    assert metrics["scaling_factor"] == 1.0 and len(metrics["latents_mean"]) == 4
    assert all(abs(m) < 0.5 for m in metrics["val_latent_mean"])
    assert all(0.5 < s < 1.5 for s in metrics["val_latent_std"])


def test_finetune_all_trains_the_encoder_too(ingested, sd_folder, tmp_path):
    before = _parts(AutoencoderKL.from_pretrained(sd_folder / "vae"))
    _train(ingested, tmp_path / "vae", pretrained=str(sd_folder), finetune="all")
    after = _parts(AutoencoderKL.from_pretrained(tmp_path / "vae"))
    assert after["encoder"] != before["encoder"] and after["decoder"] != before["decoder"]


def test_a_folder_without_a_vae_is_refused_naming_the_setting(ingested, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vae.pretrained=.*no config.json there or in vae/"):
        _train(ingested, tmp_path / "vae", pretrained=str(tmp_path))
