"""train_vae's recipe switches: the reconstruction loss (L1 + `mse_weight` x MSE; 0 is the LDM paper's L1
alone), the PatchGAN (`vae.adversarial`), which plays from step `start` on and leaves the VAE as it was
without it until then, and LPIPS (`vae.lpips_weights`)."""

from __future__ import annotations

import math

import pytest
from diffusers import AutoencoderKL
from lpips_weights import write_lpips_weights

from models.fingerprint import module_fingerprint
from tasks.common.config import config_from_dict
from tasks.ingest.stage import run_ingest
from tasks.train_vae import run_train_vae

DATA = {"resolution": 16, "val_fraction": 0.25, "synthetic": {"count": 32}}
SMALL = {"block_out_channels": [8, 16], "norm_num_groups": 4, "steps": 4, "batch_size": 4}
GAN = {"channels": 8, "layers": 2}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ingested"
    run_ingest(config_from_dict({"data": DATA}), out)
    return out


def _trained(ingested, out, **vae) -> tuple[dict, str]:
    metrics = run_train_vae(config_from_dict({"data": DATA, "vae": {**SMALL, **vae}}), ingested, out)
    return metrics, module_fingerprint(AutoencoderKL.from_pretrained(out))


def test_the_discriminator_plays_from_its_start_step_on(ingested, tmp_path):
    plain, plain_weights = _trained(ingested, tmp_path / "plain")
    waiting, waiting_weights = _trained(
        ingested, tmp_path / "waiting", adversarial={"weight": 0.5, "start": 4, **GAN}
    )
    assert waiting_weights == plain_weights  # the game starts after the last step: the VAE of no game
    assert "final_d_loss" not in waiting
    played, played_weights = _trained(
        ingested, tmp_path / "played", adversarial={"weight": 0.5, "start": 1, **GAN}
    )
    assert played_weights != plain_weights
    assert all(math.isfinite(played[k]) for k in ("final_d_loss", "final_g_loss", "final_adaptive_weight"))
    assert played["final_adaptive_weight"] > 0


def test_l1_alone_is_another_loss(ingested, tmp_path):
    _, with_mse = _trained(ingested, tmp_path / "mse")
    _, l1_alone = _trained(ingested, tmp_path / "l1", mse_weight=0.0)
    assert l1_alone != with_mse


def test_lpips_joins_the_reconstruction_loss_when_its_weights_are_given(ingested, tmp_path):
    plain, plain_weights = _trained(ingested, tmp_path / "plain")
    assert plain["perceptual_loss"] == "off" and "val_lpips" not in plain
    folder = write_lpips_weights(tmp_path / "lpips")
    perceptual, weights = _trained(ingested, tmp_path / "lpips-on", lpips_weights=str(folder))
    assert weights != plain_weights
    assert perceptual["perceptual_loss"] == f"LPIPS from {folder}"
    assert math.isfinite(perceptual["val_lpips"]) and perceptual["val_lpips"] > 0
    assert perceptual["final_perceptual"] > 0
