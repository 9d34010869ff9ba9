"""Fine-tuning from a Stable Diffusion pipeline folder, through the CLI. A tiny one built from configs
(tests/tiny_sd.py: AutoencoderKL, CLIP text model and tokenizer, UNet2DConditionModel) stands in for the
parts ldmflow would otherwise train: its VAE is validated as it is (`vae.finetune: none`), its text encoder
read at the tokenizer's own length and one layer early (`text.clip_skip: 1`), its U-Net fine-tuned. The
model it registers goes out as a diffusers pipeline folder again (`ldmflow export`)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from diffusers import AutoencoderKL
from exported import sample_exported
from PIL import Image
from projects import TINY, cli_env, init_project, write_params
from test_pipeline_e2e import ldmflow, stage_outcomes
from tiny_sd import write_sd_pipeline

from models.fingerprint import module_fingerprint
from models.sampler.images import make_grid

pytestmark = pytest.mark.e2e
SD = ["vae.pretrained=sd", "vae.finetune=none", "text.encoder=sd", "text.max_length=null", "text.clip_skip=1",
      "unet.pretrained=sd"]  # fmt: skip


def _sets(assignments: list[str]) -> list[str]:
    return [arg for assignment in assignments for arg in ("--set", assignment)]


def test_a_tiny_sd_pipeline_fine_tunes_through_the_cli(tmp_path, s3_server, prefect_api_url):
    root = tmp_path / "project"
    root.mkdir()
    write_params(root, TINY, s3_server, f"sd-{os.getpid()}")
    write_sd_pipeline(root / "sd")
    env = cli_env(s3_server, PREFECT_HOME=str(root / ".prefect"), PREFECT_API_URL=prefect_api_url)
    init_project(root, env)

    run = ldmflow(root, env, "run", *_sets(SD))
    assert set(stage_outcomes(run.stdout).values()) == {"ran"}
    given, trained = (AutoencoderKL.from_pretrained(root / d) for d in ("sd/vae", "artifacts/vae"))
    assert module_fingerprint(trained) == module_fingerprint(given)  # finetune none: the weights as given
    vae = json.loads((root / "artifacts/vae/metrics.json").read_text())
    assert vae["finetune"] == "none" and vae["steps"] == 0 and vae["scaling_factor"] == 0.18215
    text = json.loads((root / "artifacts/text/cache.json").read_text())
    assert text["max_length"] == 77 and text["clip_skip"] == 1 and text["hidden_size"] == 32
    assert "registered ldmflow version 1" in run.stdout + run.stderr

    # the registered model as a diffusers pipeline folder: a fresh process without ldmflow loads it with
    # DiffusionPipeline.from_pretrained and draws, for a seed, the very images `ldmflow generate` draws
    ldmflow(root, env, "generate", "a small red circle", "-n", "2", "--seed", "3", "--steps", "5",
            "--out", "generated.png")  # fmt: skip
    ldmflow(root, env, "export", "--out", "exported")
    assert json.loads((root / "exported/model_index.json").read_text())["text_encoder"][1] == "CLIPTextModel"
    call = {"prompt": "a small red circle", "num_images_per_prompt": 2, "seed": 3, "num_inference_steps": 5}
    images, module = sample_exported(root / "exported", tmp_path / "fresh", **call)
    assert module.startswith("diffusers_modules.")
    generated = np.asarray(Image.open(root / "generated.png").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(make_grid(images)), generated)  # bit for bit, on one device

    # the VAE was not trained, so its latents are the ones already stored: a second build encodes none
    keys = set(pd.read_parquet(root / "artifacts/latents/manifest.parquet")["latent_key"])
    ldmflow(root, env, "run", "cache_latents", "--force", *_sets(SD))
    again = json.loads((root / "artifacts/latents/cache.json").read_text())
    assert again["items_computed"] == 0 and again["items_reused"] == again["samples"]
    assert set(pd.read_parquet(root / "artifacts/latents/manifest.parquet")["latent_key"]) == keys

    # the last layer instead of the penultimate: other embeddings, so other keys
    text_keys = set(pd.read_parquet(root / "artifacts/text/manifest.parquet")["text_key"])
    ldmflow(root, env, "run", "embed_text", *_sets([*SD, "text.clip_skip=0"]))
    last_layer = json.loads((root / "artifacts/text/cache.json").read_text())
    assert last_layer["clip_skip"] == 0 and last_layer["items_computed"] == last_layer["captions"]
    assert not text_keys & set(pd.read_parquet(root / "artifacts/text/manifest.parquet")["text_key"])
