"""Fine-tuning from a Stable Diffusion pipeline folder, through the CLI. A tiny one built from configs
(tests/tiny_sd.py: AutoencoderKL, CLIP text model and tokenizer, UNet2DConditionModel) stands in for the
parts ldmflow would otherwise train: its VAE is validated as it is (`vae.finetune: none`), its text encoder
read at the tokenizer's own length and one layer early (`text.clip_skip: 1`), its U-Net fine-tuned."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from diffusers import AutoencoderKL
from projects import TINY, cli_env, init_project, write_params
from test_pipeline_e2e import ldmflow, stage_outcomes
from tiny_sd import write_sd_pipeline

from models.fingerprint import module_fingerprint

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
